"""Model name → its trainer, as "module:function" text so naming a model imports nothing.

A trainer is ``train(data, out, *, image_size, holdout, seed, category, overwrite, progress,
**options) -> Run``; ``options`` are the model's own (``backbone``, ``epochs``, ...) and only those
the user gave; one that is not a parameter of the model's trainer is refused in one line.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from edgekit.errors import EdgekitError

TRAINERS: dict[str, str] = {
    "patchcore": "edgekit.train.patchcore:train_patchcore",
    "padim": "edgekit.train.padim:train_padim",
    "sae": "edgekit.train.autoencoders:train_sae",
    "dae": "edgekit.train.autoencoders:train_dae",
    "stfpm": "edgekit.train.stfpm:train_stfpm",
    "fastflow": "edgekit.train.fastflow:train_fastflow",
    "reverse_distillation": "edgekit.train.reverse_distillation:train_reverse_distillation",
    "efficient_ad": "edgekit.train.efficient_ad:train_efficient_ad",
    "pdn-teacher": "edgekit.train.pdn_teacher:train_pdn_teacher",
}
#: Models that train on edgekit's own offline images when no --data is given (not detectors).
MODELS_WITH_OWN_DATA = frozenset({"pdn-teacher"})


def resolve(reference: str) -> Callable:
    """The function a "module:function" reference names, importing its module only now."""
    module, _, function = reference.partition(":")
    return getattr(importlib.import_module(module), function)


def trainer(model: str) -> Callable:
    if model not in TRAINERS:
        raise EdgekitError(f"unknown model {model!r}; edgekit trains {', '.join(TRAINERS)}")
    return resolve(TRAINERS[model])


def train(model: str, data: Any, out: Any, **options: Any):
    """Run ``model``'s trainer; an option its trainer does not take is one clear error."""
    function = trainer(model)
    accepted = set(inspect.signature(function).parameters)
    unknown = sorted(name for name in options if name not in accepted)
    if unknown:
        flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
        raise EdgekitError(f"{flags} does not apply to model {model!r}")
    if options.get("overwrite") and data is not None:  # never replace the data or a folder holding it
        from pathlib import Path

        from edgekit.train.run import refuse_unowned_run_dest

        root = Path(data) if isinstance(data, (str, Path)) else Path(data.root)  # a path, or a Dataset
        refuse_unowned_run_dest(Path(out), protect=[root])
    return function(data, out, **options)
