"""EfficientAD (Batzner et al., 2024) as in anomalib, small size: training and training-path scoring.

anomalib's networks (a frozen PDN-small teacher from :mod:`edgekit.families.efficient_ad.pdn_teacher`, a student
with 2 × 384 channels, an autoencoder) and losses (``EfficientAdModel.compute_losses``); the
penalty images are pdn_teacher's natural images instead of ImageNette, which is not available
offline. The whole map is in the exported graph (:class:`EfficientAdMap`): the student-teacher and
autoencoder-student maps, each normalised with quantiles fitted, as anomalib does, on normals that
were not trained on, then averaged; the numpy MapHead resizes, blurs and scores it. SCORE_RULE is
anomalib's maximum after a σ = 4 blur. Timings and AUROC by rule: docs/training.md, "EfficientAD".
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.data.datasets import Dataset, open_dataset
from edgekit.errors import EdgekitError
from edgekit.families.efficient_ad import pdn_teacher
from edgekit.families.efficient_ad.options import EfficientAdOptions
from edgekit.preprocess import InputSpec, prepare
from edgekit.progress import ProgressFn, noop
from edgekit.train.engine import Fitted, RunArgs, RunSettings, build_run
from edgekit.train.maps import MapScoring, Schedule, parameter_count, train_epochs, training_settings
from edgekit.train.run import Run

if TYPE_CHECKING:
    from typing_extensions import Unpack

CHANNELS = pdn_teacher.TEACHER_CHANNELS
HARD_QUANTILE = 0.999
WEIGHT_DECAY = 1e-5
MAP_PADDING = 4
#: The map head: anomalib's maximum, after a σ 4 px blur (pixel AUROC brick 0.989 → 0.991, grass
#: 0.917 → 0.929, gravel 0.973 → 0.979; image AUROC table in docs/training.md).
SCORE_RULE = {"score": "max", "top_fraction": 0.01, "blur_sigma": 4.0}
#: One epoch = 48 steps of one image on the default data (anomalib: 70,000 steps at 1e-4); 1e-3
#: because the run is ~1,500× shorter. Measured in docs/training.md.


def _anomalib():
    from anomalib.models.image.efficient_ad import torch_model

    return torch_model


class EfficientAdMap(nn.Module):
    """What is exported: image (N, 3, S, S) in [0, 1] → combined normalised map (N, 1, S/4, S/4).

    Holds the teacher, student and autoencoder, the teacher's channel mean/std and the four map
    quantiles (qa_st, qb_st, qa_ae, qb_ae) as buffers, so one safetensors file is the whole model.
    """

    def __init__(self, teacher: Optional[nn.Module] = None, *, image_size: int = 256) -> None:
        super().__init__()
        model = _anomalib()
        self.image_size = int(image_size)
        self.teacher = teacher if teacher is not None else pdn_teacher.new_pdn()
        self.teacher.requires_grad_(False)
        self.student = model.SmallPatchDescriptionNetwork(out_channels=2 * CHANNELS, padding=False)
        self.autoencoder = model.AutoEncoder(out_channels=CHANNELS, padding=False)
        self.register_buffer("teacher_mean", torch.zeros(1, CHANNELS, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, CHANNELS, 1, 1))
        self.register_buffer("quantiles", torch.tensor([0.0, 1.0, 0.0, 1.0]))

    def train(self, mode: bool = True) -> "EfficientAdMap":
        super().train(mode)
        self.teacher.eval()  # frozen; it has no dropout or BatchNorm, but keep its mode fixed
        return self

    def normalised_teacher(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (self.teacher(image) - self.teacher_mean) / self.teacher_std

    def raw_maps(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The student-teacher and student-autoencoder maps, zero-padded, before normalisation."""
        teacher = self.normalised_teacher(image)
        student = self.student(image)
        reconstruction = self.autoencoder(image, (self.image_size, self.image_size))
        map_st = torch.mean((teacher - student[:, :CHANNELS]) ** 2, dim=1, keepdim=True)
        map_ae = torch.mean((reconstruction - student[:, CHANNELS:]) ** 2, dim=1, keepdim=True)
        padding = (MAP_PADDING,) * 4
        return F.pad(map_st, padding), F.pad(map_ae, padding)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        map_st, map_ae = self.raw_maps(image)
        qa_st, qb_st, qa_ae, qb_ae = self.quantiles
        return 0.5 * (0.1 * (map_st - qa_st) / (qb_st - qa_st)) + 0.5 * (0.1 * (map_ae - qa_ae) / (qb_ae - qa_ae))


def input_spec_for(image_size: int) -> InputSpec:
    """RGB in [0, 1]: the PDNs and the autoencoder ImageNet-normalise inside (anomalib's networks)."""
    return InputSpec(height=image_size, width=image_size, channels=3, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


SCORING = MapScoring(
    lambda config: EfficientAdMap(image_size=int(config["image_size"])),
    SCORE_RULE,
    "training (torch map graph + numpy map head)",
    batch_size=4,
)
load_network, head_for, score_run, evaluate_run = (
    SCORING.load_network,
    SCORING.head_for,
    SCORING.score_run,
    SCORING.evaluate_run,
)


# ---- the teacher ----------------------------------------------------------------------------------


def teacher_cache_dir() -> Path:
    """Where default teachers are kept: $EDGEKIT_CACHE, else $XDG_CACHE_HOME/edgekit, else ~/.cache/edgekit."""
    if os.environ.get("EDGEKIT_CACHE"):
        return Path(os.environ["EDGEKIT_CACHE"]) / "pdn-teacher"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgekit" / "pdn-teacher"


def default_teacher(*, progress: ProgressFn = noop) -> tuple[nn.Module, str]:
    """edgekit's default teacher: distilled once with pdn_teacher's defaults and kept in the cache,
    in a folder named after those settings (a pdn-teacher run, reusable with --teacher-weights)."""
    settings = (
        f"{pdn_teacher.DEFAULT_BACKBONE}-{pdn_teacher.DEFAULT_CROP}-{pdn_teacher.DEFAULT_EPOCHS}-"
        f"{pdn_teacher.DEFAULT_BATCH}-{pdn_teacher.DEFAULT_RATE}-{','.join(pdn_teacher.NATURAL_IMAGES)}"
    )
    folder = teacher_cache_dir() / f"lite0-{hashlib.sha256(settings.encode()).hexdigest()[:12]}"
    if not (folder / "run.json").is_file():
        pdn_teacher.train_pdn_teacher(None, folder, overwrite=True, progress=progress)
    return pdn_teacher.load_teacher(folder)


# ---- training -------------------------------------------------------------------------------------


def _channel_stats(teacher: nn.Module, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the teacher's outputs over ``images`` (anomalib's teacher_channel_mean_std)."""
    total = squares = None
    count = 0
    with torch.no_grad():
        for start in range(0, len(images), 4):
            out = teacher(torch.from_numpy(images[start : start + 4])).double()
            total = out.sum(dim=(0, 2, 3)) if total is None else total + out.sum(dim=(0, 2, 3))
            squares = (out**2).sum(dim=(0, 2, 3)) if squares is None else squares + (out**2).sum(dim=(0, 2, 3))
            count += out[:, 0].numel()
    mean = total / count
    std = torch.sqrt((squares / count - mean**2).clamp_min(1e-12))
    return mean.float().reshape(1, -1, 1, 1), std.float().reshape(1, -1, 1, 1)


def _map_quantiles(network: EfficientAdMap, images: np.ndarray) -> torch.Tensor:
    """(qa_st, qb_st, qa_ae, qb_ae): 90 % and 99.5 % quantiles of the raw maps up-sampled to S (anomalib's way)."""
    maps_st, maps_ae = [], []
    network.eval()
    with torch.no_grad():
        for start in range(0, len(images), 4):
            map_st, map_ae = network.raw_maps(torch.from_numpy(images[start : start + 4]))
            size = (network.image_size, network.image_size)
            maps_st.append(F.interpolate(map_st, size=size, mode="bilinear", align_corners=False).flatten())
            maps_ae.append(F.interpolate(map_ae, size=size, mode="bilinear", align_corners=False).flatten())
    reduce = _anomalib().reduce_tensor_elems
    values = []
    for maps in (maps_st, maps_ae):
        flat = reduce(torch.cat(maps))
        values += [torch.quantile(flat, 0.9), torch.quantile(flat, 0.995)]
    return torch.stack(values)


def _fit(
    network: EfficientAdMap,
    images: np.ndarray,
    photos: Sequence[np.ndarray],
    schedule: Schedule,
) -> tuple[list[float], dict]:
    """anomalib's three losses, Adam on the student and the autoencoder; returns the loss per epoch and
    the last epoch's mean of each loss term."""
    model = _anomalib()
    parameters = list(network.student.parameters()) + list(network.autoencoder.parameters())
    optimizer = torch.optim.Adam(parameters, lr=schedule.learning_rate, weight_decay=WEIGHT_DECAY)
    steps = schedule.epochs * -(-len(images) // schedule.batch_size)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, int(0.95 * steps)), gamma=0.1)
    penalty_rng = np.random.default_rng(schedule.seed + 1)
    size = network.image_size
    terms = {"student_teacher": [], "penalty": [], "autoencoder": [], "student_autoencoder": []}
    network.train()
    schedule.progress("train", 0, steps)  # per step: one step takes seconds on a CPU

    def step(batch: torch.Tensor) -> float:
        count = len(batch)
        teacher = network.normalised_teacher(batch)
        augmented = model.EfficientAdModel.choose_random_aug_image(batch)
        teacher_augmented = network.normalised_teacher(augmented)
        student = network.student(torch.cat([batch, augmented]))
        distance = (teacher - student[:count, :CHANNELS]) ** 2
        hard = torch.quantile(model.reduce_tensor_elems(distance), HARD_QUANTILE)
        loss_hard = torch.mean(distance[distance >= hard])
        penalty_images = torch.from_numpy(pdn_teacher.random_views(photos, count, size, penalty_rng, grey_share=0.3))
        loss_penalty = torch.mean(network.student(penalty_images)[:, :CHANNELS] ** 2)
        reconstruction = network.autoencoder(augmented, (size, size))
        loss_ae = torch.mean((teacher_augmented - reconstruction) ** 2)
        loss_stae = torch.mean((reconstruction - student[count:, CHANNELS:]) ** 2)
        loss = loss_hard + loss_penalty + loss_ae + loss_stae
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        for name, value in zip(terms, (loss_hard, loss_penalty, loss_ae, loss_stae)):
            terms[name].append(float(value.detach()))
        schedule.progress("train", len(terms["penalty"]), steps)
        return float(loss.detach())

    history = train_epochs(step, images, replace(schedule, progress=noop))  # progress is per step, above
    per_epoch = -(-len(images) // schedule.batch_size)
    last = {name: round(float(np.mean(values[-per_epoch:])), 6) for name, values in terms.items()}
    return history, last


def train_efficient_ad(
    data: str | Path | Dataset,
    out: str | Path,
    *,
    teacher_weights: Optional[str | Path] = None,
    image_size: int = 256,
    epochs: Optional[int] = None,
    batch_size: Optional[int] = None,
    learning_rate: Optional[float] = None,
    **run: Unpack[RunArgs],
) -> Run:
    """Train EfficientAD-S on a dataset's normal training images, held-out ones excluded.

    ``teacher_weights``: anomalib's pretrained_teacher_small.pth or a pdn-teacher run folder; None
    uses edgekit's default distilled teacher (distilled into the user cache on first use).
    """
    how = RunSettings(**run)
    schedule = training_settings(epochs, batch_size, learning_rate, how, defaults=EfficientAdOptions)
    if image_size < 256 or image_size % 64:  # the autoencoder's encoder ends in an 8x8 convolution at S/32
        raise EdgekitError(f"--image-size must be a multiple of 64 and at least 256, not {image_size}")
    dataset: Dataset = (
        data if isinstance(data, Dataset) else open_dataset(Path(data), category=how.category, seed=how.seed)
    )
    if teacher_weights is not None:
        teacher, teacher_origin = pdn_teacher.load_teacher(teacher_weights)
    else:
        teacher, teacher_origin = default_teacher(progress=how.progress)

    def fit(writer, dataset, trained: list, held: list) -> Fitted:
        spec = how.input(input_spec_for(image_size))
        images = prepare(trained, spec)
        network = EfficientAdMap(teacher, image_size=image_size)
        mean, std = _channel_stats(teacher, images)
        network.teacher_mean.copy_(mean)
        network.teacher_std.copy_(std)
        history, last_terms = _fit(network, images, pdn_teacher.natural_images(), schedule)
        quantile_images = prepare(held, spec) if held else images
        network.quantiles.copy_(_map_quantiles(network, quantile_images))
        network.eval()
        writer.save_network(SCORING.network_file, network)
        teacher_kind = "anomalib file" if Path(teacher_weights or "").is_file() else "distilled by edgekit"
        config = {
            "model": "efficient_ad",
            "backbone": f"pdn_small teacher ({teacher_kind}: {teacher_origin})",
            "teacher": teacher_origin,
            "layers": [],
            "image_size": image_size,
            "epochs": schedule.epochs,
            "steps": schedule.epochs * -(-len(images) // schedule.batch_size),
            "batch_size": schedule.batch_size,
            "learning_rate": schedule.learning_rate,
            "seed": how.seed,
            "head": dict(SCORE_RULE),
            "parameters": parameter_count(network),
            "quantiles_fitted_on": "held-out normals" if held else "trained-on images",
            "quantiles": [round(float(q), 8) for q in network.quantiles],
        }
        return Fitted(
            config,
            spec,
            network,
            {"epochs": schedule.epochs, "loss": history, "final_loss": history[-1], "final_loss_terms": last_terms},
        )

    return build_run(dataset, out, how, fit=fit, evaluate=evaluate_run)
