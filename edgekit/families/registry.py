"""Every model name edgekit trains → its Family: the one table the generic layers look names up in.

A new family is one folder under ``edgekit/families/``, one line here and one
``calibration/<name>.toml``. Nothing here imports a family until a function below is called.
"""

from __future__ import annotations

from typing import Callable, Optional

from edgekit.errors import EdgekitError
from edgekit.families.base import Family, resolve

FAMILIES: dict[str, Family] = {
    "patchcore": Family(
        "patchcore",
        "edgekit.families.patchcore.train:train_patchcore",
        "edgekit.families.patchcore.export:patchcore_parts",
        head="knn",
        recipe="patchcore",
        bank_options=True,
        options="edgekit.families.patchcore.options:PatchcoreOptions",
    ),
    "padim": Family(
        "padim",
        "edgekit.families.padim.train:train_padim",
        "edgekit.families.padim.export:padim_parts",
        head="mahalanobis",
        recipe="padim",
        options="edgekit.families.padim.options:PadimOptions",
    ),
    "sae": Family(
        "sae",
        "edgekit.families.autoencoders.train:train_sae",
        "edgekit.families.autoencoders.export:sae_parts",
        head="map",
        recipe="sae",
        options="edgekit.families.autoencoders.options:SaeOptions",
    ),
    "dae": Family(
        "dae",
        "edgekit.families.autoencoders.train:train_dae",
        "edgekit.families.autoencoders.export:dae_parts",
        head="map",
        recipe="dae",
        options="edgekit.families.autoencoders.options:DaeOptions",
    ),
    "stfpm": Family(
        "stfpm",
        "edgekit.families.stfpm.train:train_stfpm",
        "edgekit.families.stfpm.export:stfpm_parts",
        head="map",
        recipe="stfpm",
        options="edgekit.families.stfpm.options:StfpmOptions",
    ),
    "fastflow": Family(
        "fastflow",
        "edgekit.families.fastflow.train:train_fastflow",
        "edgekit.families.fastflow.export:fastflow_parts",
        head="map",
        recipe="fastflow",
        options="edgekit.families.fastflow.options:FastflowOptions",
    ),
    "reverse_distillation": Family(
        "reverse_distillation",
        "edgekit.families.reverse_distillation.train:train_reverse_distillation",
        "edgekit.families.reverse_distillation.export:reverse_distillation_parts",
        head="map",
        recipe="reverse_distillation",
        options="edgekit.families.reverse_distillation.options:ReverseDistillationOptions",
    ),
    "efficient_ad": Family(
        "efficient_ad",
        "edgekit.families.efficient_ad.train:train_efficient_ad",
        "edgekit.families.efficient_ad.export:efficient_ad_parts",
        head="map",
        recipe="efficient_ad",
        options="edgekit.families.efficient_ad.options:EfficientAdOptions",
    ),
    "dfm": Family(
        "dfm",
        "edgekit.families.dfm.train:train_dfm",
        "edgekit.families.dfm.export:dfm_parts",
        head="map",
        recipe="dfm",
        options="edgekit.families.dfm.options:DfmOptions",
    ),
    "pdn-teacher": Family(
        "pdn-teacher",
        "edgekit.families.efficient_ad.pdn_teacher:train_pdn_teacher",
        own_data=True,
        options="edgekit.families.efficient_ad.options:PdnTeacherOptions",
        not_exported="edgekit.families.efficient_ad.export:TEACHER_NOT_A_DETECTOR",
    ),
}
#: Models that train on edgekit's own offline images when no --data is given (not detectors).
MODELS_WITH_OWN_DATA = frozenset(name for name, family in FAMILIES.items() if family.own_data)


def family(model: str) -> Family:
    """The registered family of ``model``; an unknown name is one clear error."""
    if model not in FAMILIES:
        raise EdgekitError(f"unknown model {model!r}; edgekit trains {', '.join(FAMILIES)}")
    return FAMILIES[model]


def trainer(model: str) -> Callable:
    return resolve(family(model).trainer)


def export_parts(model: str) -> Callable:
    """``parts(run, options) -> FamilyParts`` of a detector family; a model that is not exported is one error."""
    found = FAMILIES.get(model)
    if found is not None and found.not_exported:
        raise EdgekitError(resolve(found.not_exported))
    if found is None or found.export_parts is None:
        raise EdgekitError(f"exporting model {model!r} is not supported yet")
    return resolve(found.export_parts)


def options_of(model: str) -> Optional[type]:
    """The dataclass of a model's own training options (torch-free), or None."""
    found = family(model)
    return resolve(found.options) if found.options else None


def recipe_name(model: str) -> str:
    """The calibration recipe a model's exports read: calibration/<name>.toml."""
    found = FAMILIES.get(model)
    return found.recipe if found and found.recipe else model


def takes_bank_options(model: str) -> bool:
    found = FAMILIES.get(model)
    return bool(found and found.bank_options)
