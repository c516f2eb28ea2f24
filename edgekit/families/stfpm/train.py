"""STFPM (Student-Teacher Feature Pyramid Matching, Wang et al. 2021) on the host.

A frozen teacher from the offline registry and a student of the same architecture, trained from
random init to reproduce the teacher's L2-normalised features at three pyramid levels (anomalib's
``STFPMLoss``). The anomaly map is anomalib's product over the levels, but taken at the first
level's grid inside the exported graph (:class:`StfpmNetwork`): a 16× smaller network output for
the same AUROC within 0.015. The numpy MapHead resizes, blurs and scores it, on the device and in
training. SCORE_RULE (top 1 % after a σ = 4 blur), the epochs and the optimizer settings, with
their measurements: docs/training.md, "STFPM".
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.data.datasets import Dataset
from edgekit.errors import EdgekitError
from edgekit.families.stfpm.options import StfpmOptions
from edgekit.preprocess import prepare
from edgekit.train.backbones import DEFAULT_BACKBONE, FeaturePyramid, build_feature_extractor
from edgekit.train.engine import Fitted, RunArgs, RunSettings, build_run
from edgekit.train.inputs import input_spec_for
from edgekit.train.maps import MapScoring, Schedule, parameter_count, train_epochs, training_settings
from edgekit.train.run import Run

if TYPE_CHECKING:
    from typing_extensions import Unpack

DEFAULT_LAYERS = (1, 2, 3)
SCORE_RULE = {"score": "top_mean", "top_fraction": 0.01, "blur_sigma": 4.0}
MOMENTUM, WEIGHT_DECAY = 0.9, 1e-3  # anomalib's SGD (lightning_model.py: lr 0.4, momentum 0.9, wd 0.001)


class StudentPyramid(nn.Module):
    """The student: a pyramid's modules, trainable (BatchNorm trains on batch statistics)."""

    def __init__(self, pyramid: FeaturePyramid) -> None:
        super().__init__()
        self.network = pyramid.network
        self.steps, self.taps = tuple(pyramid.steps), tuple(pyramid.taps)
        self.requires_grad_(True)

    # the teacher's walk through the steps, collecting the tapped levels (only train() differs)
    forward = FeaturePyramid.forward


def normalise(features: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize(features)`` (unit L2 norm over channels) written so LiteRT converts it:
    litert-torch refused F.normalize's expanded divisor ("'tfl.div' op operands don't have
    broadcast-compatible shapes"); a (N, 1, h, w) divisor broadcasts."""
    return features / torch.sqrt(torch.clamp_min((features * features).sum(dim=1, keepdim=True), eps * eps))


def layer_map(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """0.5·||norm(t) − norm(s)||² over channels, (N, 1, h, w): anomalib's per-level map before its resize."""
    difference = normalise(teacher) - normalise(student)
    return 0.5 * (difference * difference).sum(dim=1, keepdim=True)


def anomaly_map(
    teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], size: tuple[int, int]
) -> torch.Tensor:
    """The product over levels of the per-level maps, each up-sampled bilinearly to ``size``."""
    product = None
    for t, s in zip(teacher, student):
        level = layer_map(t, s)
        if tuple(level.shape[-2:]) != tuple(size):
            level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
        product = level if product is None else product * level
    return product


class StfpmNetwork(nn.Module):
    """What is exported: image → teacher and student pyramids → anomaly map (N, 1, h, w) at the
    first level's grid (the MapHead up-samples it to the input size)."""

    def __init__(self, teacher: FeaturePyramid, student: StudentPyramid) -> None:
        super().__init__()
        self.teacher, self.student = teacher, student

    def features(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            teacher = self.teacher(image)
        return teacher, self.student(image)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        teacher, student = self.teacher(image), self.student(image)
        return anomaly_map(teacher, student, tuple(teacher[0].shape[-2:]))


def build_network(config: dict, *, weights: Optional[Path] = None, pretrained: bool = False) -> StfpmNetwork:
    """Teacher (ImageNet weights when ``pretrained``) and a randomly initialised student."""
    backbone, layers = str(config["backbone"]), tuple(config["layers"])
    teacher = build_feature_extractor(backbone, layers=layers, weights=weights, pretrained=pretrained)
    student = StudentPyramid(build_feature_extractor(backbone, layers=layers, pretrained=False))
    return StfpmNetwork(teacher, student)


SCORING = MapScoring(build_network, SCORE_RULE, "training (torch teacher/student map + numpy map head)")
load_network, head_for, score_run, evaluate_run = (
    SCORING.load_network,
    SCORING.head_for,
    SCORING.score_run,
    SCORING.evaluate_run,
)


def _fit(
    network: StfpmNetwork,
    images: np.ndarray,
    schedule: Schedule,
) -> list[float]:
    """SGD on the student (anomalib's optimiser), the teacher frozen; mean loss per epoch."""
    from anomalib.models.image.stfpm.loss import STFPMLoss

    loss_fn = STFPMLoss()
    # channels-last: the student's depthwise backward ran 2x faster (batch 8, 256², 2 cores, loaded)
    network.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        network.student.parameters(), lr=schedule.learning_rate, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    network.student.train()

    def step(batch: torch.Tensor) -> float:
        teacher, student = network.features(batch.contiguous(memory_format=torch.channels_last))
        loss = loss_fn(dict(enumerate(teacher)), dict(enumerate(student)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    history = train_epochs(step, images, schedule, min_batch=2)
    network.to(memory_format=torch.contiguous_format)
    network.eval()
    return history


def train_stfpm(
    data: str | Path | Dataset,
    out: str | Path,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: Optional[Path] = None,
    image_size: int = 256,
    epochs: Optional[int] = None,
    batch_size: Optional[int] = None,
    learning_rate: Optional[float] = None,
    layers: Sequence[int] = DEFAULT_LAYERS,
    **run: Unpack[RunArgs],
) -> Run:
    """Train an STFPM student against the frozen teacher on a dataset's normal training images."""
    how = RunSettings(**run)
    schedule = training_settings(
        epochs,
        batch_size,
        learning_rate,
        how,
        defaults=StfpmOptions,
        min_batch=2,
        why=" (the student's BatchNorm trains)",
    )
    if image_size < 32 or image_size % 16:
        raise EdgekitError(f"--image-size must be a multiple of 16 and at least 32, not {image_size}")
    config = {
        "model": "stfpm",
        "backbone": backbone,
        "layers": list(layers),
        "image_size": image_size,
        "epochs": schedule.epochs,
        "batch_size": schedule.batch_size,
        "learning_rate": schedule.learning_rate,
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
        "seed": how.seed,
        "head": dict(SCORE_RULE),
    }

    def fit(writer, dataset, trained: list, held: list) -> Fitted:
        network = build_network(config, weights=weights, pretrained=True)
        spec = how.input(input_spec_for(backbone, image_size))
        history = _fit(network, prepare(trained, spec), schedule)
        writer.save_network(SCORING.network_file, network)
        return Fitted(
            {
                **config,
                "layers": list(network.teacher.layers),
                "parameters": parameter_count(network),
                "trained_parameters": parameter_count(network.student),
                "strides": list(network.teacher.strides),
                "channels": list(network.teacher.channels),
            },
            spec,
            network,
            {"epochs": schedule.epochs, "loss": history, "final_loss": history[-1]},
        )

    return build_run(data, out, how, fit=fit, evaluate=evaluate_run)
