"""EfficientAD's PDN teacher, distilled offline from an edgekit backbone (``--model pdn-teacher``).

EfficientAD's teacher is a PDN-small (anomalib's ``SmallPatchDescriptionNetwork``) distilled once
from a pretrained backbone. anomalib downloads the authors' weights; edgekit never downloads, so it
loads that file when the user has it (:func:`load_teacher`, ``--teacher-weights FILE``) or distils
its own here: targets from tf_efficientnet_lite0 levels 2 + 3, built the paper's way, on
scikit-image's bundled photos (NATURAL_IMAGES) or a folder of the user's images, for few enough
steps that the default stays within minutes on two CPU cores. The result is far cruder than the
authors' teacher; how it differs from the paper and what it measured: docs/training.md,
"EfficientAD's PDN teacher".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.families.efficient_ad.options import PdnTeacherOptions
from edgekit.progress import ProgressFn, noop
from edgekit.train.backbones import DEFAULT_BACKBONE, build_feature_extractor, get_backbone_spec
from edgekit.train.run import Run, RunWriter, open_run

TEACHER_FILE = "teacher.safetensors"
TEACHER_CHANNELS = 384
TARGET_LAYERS = (2, 3)
#: Photos scikit-image ships inside its wheel (no download), the ImageNet stand-in.
NATURAL_IMAGES = (
    "astronaut",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
VIEWS_PER_EPOCH = 64  # an "epoch" of the distillation: 64 random views (the data is a view stream)
NORMALISATION_VIEWS = 64  # views the target channels' mean and std are estimated on
#: Distillation defaults (epochs of 64 views, batch, Adam learning rate, crop side); measured in
#: docs/training.md. 1e-3 was the only rate tried to the end (3e-4 and 3e-3 runs were cut short
#: by the time the shared machine gave them).
DEFAULT_EPOCHS, DEFAULT_BATCH, DEFAULT_RATE = (
    PdnTeacherOptions.epochs,
    PdnTeacherOptions.batch_size,
    PdnTeacherOptions.learning_rate,
)
DEFAULT_CROP = 128


def new_pdn(*, padding: bool = False) -> nn.Module:
    """A PDN-small with 384 output channels (anomalib's class; it ImageNet-normalises its input)."""
    from anomalib.models.image.efficient_ad.torch_model import SmallPatchDescriptionNetwork

    return SmallPatchDescriptionNetwork(out_channels=TEACHER_CHANNELS, padding=padding)


# ---- the data: natural images as random views ---------------------------------------------------


def natural_images(folder: Optional[Path] = None) -> list[np.ndarray]:
    """RGB uint8 photos: scikit-image's bundled ones (no download), or every image in ``folder``."""
    from edgekit.preprocess import read_image

    if folder is not None:
        files = sorted(
            p
            for p in Path(folder).rglob("*")
            if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
        )
        if not files:
            raise EdgekitError(f"{folder}: no images to distil a teacher on")
        return [read_image(path, channels=3) for path in files]
    import skimage.data

    photos = []
    for name in NATURAL_IMAGES:
        photo = np.asarray(getattr(skimage.data, name)())
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=2)
        photos.append(np.ascontiguousarray(photo[..., :3]).astype(np.uint8))
    return photos


def random_views(
    photos: Sequence[np.ndarray],
    count: int,
    size: int,
    rng: np.random.Generator,
    *,
    grey_share: float = 0.1,
    min_share: float = 0.35,
) -> np.ndarray:
    """``count`` random crops (side ``min_share``..1 of the photo's shorter side), resized to ``size``²,
    flipped left-right half the time and grey ``grey_share`` of the time: float32 (count, 3, S, S) in [0, 1]."""
    from PIL import Image

    views = np.empty((count, 3, size, size), np.float32)
    for i in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        height, width = photo.shape[:2]
        side = int(round(min(height, width) * rng.uniform(min_share, 1.0)))
        top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size), Image.BILINEAR)
        view = np.asarray(crop, np.float32) / 255.0
        if rng.random() < 0.5:
            view = view[:, ::-1]
        if rng.random() < grey_share:
            view = np.repeat(view.mean(axis=2, keepdims=True), 3, axis=2)
        views[i] = view.transpose(2, 0, 1)
    return views


# ---- the targets ----------------------------------------------------------------------------------


class BackboneTargets(nn.Module):
    """The distillation targets: (N, 3, S, S) images in [0, 1] → (N, 384, S/4, S/4) backbone features
    (PatchCore-style aggregation of two pyramid levels, see docs/training.md), unstandardised."""

    def __init__(
        self, backbone: str = DEFAULT_BACKBONE, *, weights: Optional[Path] = None, layers: Sequence[int] = TARGET_LAYERS
    ) -> None:
        super().__init__()
        spec = get_backbone_spec(backbone)
        self.pyramid = build_feature_extractor(backbone, layers=layers, weights=weights)
        self.register_buffer("mean", torch.tensor(spec.mean).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).reshape(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        doubled = F.interpolate(images, scale_factor=2.0, mode="bilinear", align_corners=False)
        levels = self.pyramid((doubled - self.mean) / self.std)
        grid = levels[0].shape[-2:]
        total = None
        for level in levels:
            # unfold 3x3 + adaptive average pooling of the (C, 3, 3) vector to 384 values is linear per
            # position: one fixed 3x3 convolution (C -> 384), exactly equal and ~50x cheaper.
            pooled = F.conv2d(level, _pooling_kernel(level.shape[1]).to(level), padding=1)
            if pooled.shape[-2:] != grid:
                pooled = F.interpolate(pooled, size=grid, mode="bilinear", align_corners=False)
            total = pooled if total is None else total + pooled
        return total / len(levels)


def _pooling_kernel(channels: int) -> torch.Tensor:
    """(384, C, 3, 3): ``F.adaptive_avg_pool1d`` of an unfolded (C·9) neighbourhood to 384 values, as weights."""
    identity = torch.eye(channels * 9).unsqueeze(1)  # (C·9, 1, C·9)
    pooling = F.adaptive_avg_pool1d(identity, TEACHER_CHANNELS)[:, 0, :]  # (C·9, 384): row i = pooled basis i
    return pooling.T.reshape(TEACHER_CHANNELS, channels, 3, 3).contiguous()


def distillation_error(
    pdn: nn.Module, targets: nn.Module, views: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> float:
    """Mean squared error of ``pdn``'s output against the standardised targets on ``views`` (1.0 = as
    good as predicting every channel's mean). ``pdn`` must pad (output grid = input / 4)."""
    with torch.no_grad():
        wanted = (targets(views) - mean) / std
        return float(F.mse_loss(pdn(views), wanted))


# ---- loading a teacher ----------------------------------------------------------------------------


def _check_state(state: object, source: str) -> dict[str, torch.Tensor]:
    expected = new_pdn().state_dict()
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EdgekitError(f"{source}: not a PDN-small teacher state dict (found {type(state).__name__})")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    problems = [
        f"{len(keys)} {what} (first: {keys[0]})"
        for keys, what in ((missing, "missing keys"), (unexpected, "unexpected keys"), (wrong, "shape mismatches"))
        if keys
    ]
    if problems:
        raise EdgekitError(
            f"{source}: not a PDN-small teacher with {TEACHER_CHANNELS} channels "
            f"(anomalib's pretrained_teacher_small.pth layout): {'; '.join(problems)}"
        )
    return {key: value.float() for key, value in state.items()}


def load_teacher(source: str | Path) -> tuple[nn.Module, str]:
    """A frozen PDN-small teacher (no padding, eval mode) and a line saying where it came from.

    ``source`` is a ``pdn-teacher`` run folder, or a torch file holding anomalib's teacher state
    dict (read with ``weights_only=True``; keys and shapes must match exactly)."""
    path = Path(source)
    teacher = new_pdn()
    if path.is_dir():
        run = open_run(path)
        if run.model != "pdn-teacher":
            raise EdgekitError(
                f"{path}: --teacher-weights needs a pdn-teacher run or a teacher .pth file, not a {run.model!r} run"
            )
        from safetensors.torch import load_file

        if not (path / TEACHER_FILE).is_file():
            raise EdgekitError(f"run {path}: {TEACHER_FILE} is missing")
        state = _check_state(load_file(str(path / TEACHER_FILE)), str(path / TEACHER_FILE))
        origin = f"pdn-teacher run {path.resolve()} (distilled from {run.config['backbone']})"
    elif path.is_file():
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a bad file raises many types; all mean the same to the user
            raise EdgekitError(f"{path}: not a readable weights-only torch file ({exc.__class__.__name__})") from None
        state = _check_state(loaded, str(path))
        origin = f"teacher file {path.resolve()}"
    else:
        raise EdgekitError(f"{path}: no such teacher file or pdn-teacher run")
    teacher.load_state_dict(state, strict=True)
    teacher.requires_grad_(False)
    return teacher.eval(), origin


# ---- distillation ---------------------------------------------------------------------------------


def _source_photos(data: object, category: Optional[str]) -> tuple[list[np.ndarray], str]:
    """The photos to distil on and a line naming them."""
    if data is None:
        return natural_images(), "scikit-image bundled photos: " + ", ".join(NATURAL_IMAGES)
    from edgekit.data.datasets import Dataset, open_dataset
    from edgekit.preprocess import read_image

    dataset = data if isinstance(data, Dataset) else None
    if dataset is None:
        try:
            dataset = open_dataset(Path(data), category=category)  # type: ignore[arg-type]
        except EdgekitError:
            if not Path(data).is_dir():  # type: ignore[arg-type]
                raise
            return natural_images(Path(data)), f"images under {Path(data).resolve()}"  # type: ignore[arg-type]
    return [read_image(s.path, channels=3) for s in dataset.train], f"training images of {dataset.root.resolve()}"


def train_pdn_teacher(
    data: object,
    out: str | Path,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: Optional[str | Path] = None,
    image_size: int = DEFAULT_CROP,
    epochs: Optional[int] = None,
    batch_size: Optional[int] = None,
    learning_rate: Optional[float] = None,
    seed: int = 0,
    category: Optional[str] = None,
    holdout: float = 0.2,
    overwrite: bool = False,
    progress: ProgressFn = noop,
) -> Run:
    """Distil a PDN-small teacher from ``backbone`` on random views of ``data`` (None: scikit-image's
    bundled photos; a dataset: its training images; a folder: every image in it).

    ``image_size`` is the side of the views (a multiple of 32); an epoch is 64 views. ``holdout`` is
    accepted because the CLI always passes it, and unused: a teacher is no detector and fits no
    threshold, so it is distilled on every image.
    """
    epochs = DEFAULT_EPOCHS if epochs is None else epochs
    batch_size = DEFAULT_BATCH if batch_size is None else batch_size
    learning_rate = DEFAULT_RATE if learning_rate is None else learning_rate
    if image_size < 64 or image_size % 32:
        raise EdgekitError(f"--image-size must be a multiple of 32 and at least 64, not {image_size}")
    if epochs < 1 or batch_size < 1 or not learning_rate > 0:
        raise EdgekitError(
            f"--epochs and --batch-size must be at least 1 and --learning-rate positive, "
            f"not {epochs}, {batch_size}, {learning_rate}"
        )
    photos, source = _source_photos(data, category)
    writer = RunWriter(Path(out), overwrite=overwrite)
    with writer:
        started = time.perf_counter()
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        targets = BackboneTargets(backbone, weights=Path(weights) if weights is not None else None)
        held_views = torch.from_numpy(
            random_views(photos, NORMALISATION_VIEWS, image_size, np.random.default_rng(seed + 1))
        )
        with torch.no_grad():
            normalising = targets(torch.from_numpy(random_views(photos, NORMALISATION_VIEWS, image_size, rng)))
        mean = normalising.mean(dim=(0, 2, 3), keepdim=True)
        std = normalising.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        pdn = new_pdn(padding=True)
        random_error = distillation_error(pdn.eval(), targets, held_views, mean, std)
        optimizer = torch.optim.Adam(pdn.parameters(), lr=learning_rate, weight_decay=1e-5)
        steps_per_epoch = -(-VIEWS_PER_EPOCH // batch_size)
        history = []
        pdn.train()
        total_steps = epochs * steps_per_epoch
        progress("distil teacher", 0, total_steps)
        for epoch in range(epochs):
            total = 0.0
            for step in range(steps_per_epoch):
                views = torch.from_numpy(random_views(photos, batch_size, image_size, rng))
                wanted = (targets(views) - mean) / std
                loss = F.mse_loss(pdn(views), wanted)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                progress("distil teacher", epoch * steps_per_epoch + step + 1, total_steps)
            history.append(round(total / steps_per_epoch, 6))
        error = distillation_error(pdn.eval(), targets, held_views, mean, std)
        writer.save_network(TEACHER_FILE, pdn)  # padding does not change the weights' names or shapes
        train_seconds = time.perf_counter() - started
        config = {
            "model": "pdn-teacher",
            "backbone": backbone,
            "weights": str(weights) if weights else None,
            "layers": list(TARGET_LAYERS),
            "image_size": image_size,
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "seed": seed,
            "views": epochs * steps_per_epoch * batch_size,
            "channels": TEACHER_CHANNELS,
            "source_images": source,
            "source_count": len(photos),
            "parameters": int(sum(p.numel() for p in pdn.parameters())),
            "train_seconds": round(train_seconds, 2),
        }
        writer.save_json(
            "metrics.json",
            {
                "loss": history,
                "final_loss": history[-1],
                "held_out_views": NORMALISATION_VIEWS,
                "distillation_mse": round(error, 6),
                "random_pdn_mse": round(random_error, 6),
                "note": "mean squared error against standardised backbone targets on unseen random views "
                "(1.0 = predicting each channel's mean)",
            },
        )
        return writer.commit(config)
