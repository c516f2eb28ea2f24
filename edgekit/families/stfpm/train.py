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

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.data.datasets import Dataset, open_dataset
from edgekit.errors import EdgekitError
from edgekit.preprocess import ImageLike, prepare
from edgekit.progress import ProgressFn, noop
from edgekit.runtime.heads import MapHead
from edgekit.train.backbones import DEFAULT_BACKBONE, FeaturePyramid, build_feature_extractor
from edgekit.train.maps import (evaluate_map_run, input_config, load_weights, map_head_for, parameter_count,
                                score_map_run, split_train_images, train_epochs, training_settings)
from edgekit.train.inputs import input_spec_for
from edgekit.train.run import Run, RunWriter, provenance

NETWORK_FILE = "network.safetensors"
DEFAULT_LAYERS = (1, 2, 3)
SCORE_RULE = {"score": "top_mean", "top_fraction": 0.01, "blur_sigma": 4.0}
DEFAULT_EPOCHS, DEFAULT_BATCH_SIZE, DEFAULT_LEARNING_RATE = 10, 8, 0.4
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


def anomaly_map(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
                size: tuple[int, int]) -> torch.Tensor:
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


def load_network(run: Run) -> StfpmNetwork:
    """The run's teacher and student from its config and safetensors weights (nothing read elsewhere)."""
    return load_weights(build_network(dict(run.config)), run, NETWORK_FILE)


def head_for(run: Run) -> MapHead:
    return map_head_for(run, SCORE_RULE)


def score_run(run: Run, images: Sequence[ImageLike], *, network: Optional[nn.Module] = None, batch_size: int = 8,
              progress: ProgressFn = noop) -> tuple[np.ndarray, np.ndarray]:
    """The training path's raw scores (N,) and maps (N, H, W): the torch graph + the shared MapHead."""
    return score_map_run(run, images, network, load_network, SCORE_RULE, batch_size=batch_size, progress=progress)


def _fit(network: StfpmNetwork, images: np.ndarray, *, epochs: int, batch_size: int, learning_rate: float,
         seed: int, progress: ProgressFn) -> list[float]:
    """SGD on the student (anomalib's optimiser), the teacher frozen; mean loss per epoch."""
    from anomalib.models.image.stfpm.loss import STFPMLoss

    loss_fn = STFPMLoss()
    # channels-last: the student's depthwise backward ran 2x faster (batch 8, 256², 2 cores, loaded)
    network.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(network.student.parameters(), lr=learning_rate, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    network.student.train()

    def step(batch: torch.Tensor) -> float:
        teacher, student = network.features(batch.contiguous(memory_format=torch.channels_last))
        loss = loss_fn(dict(enumerate(teacher)), dict(enumerate(student)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    history = train_epochs(step, images, epochs=epochs, batch_size=batch_size, seed=seed, progress=progress,
                           min_batch=2)
    network.to(memory_format=torch.contiguous_format)
    network.eval()
    return history


def train_stfpm(data: str | Path | Dataset, out: str | Path, *, backbone: str = DEFAULT_BACKBONE,
                weights: Optional[Path] = None, image_size: int = 256, epochs: Optional[int] = None,
                batch_size: Optional[int] = None, learning_rate: Optional[float] = None, holdout: float = 0.2,
                seed: int = 0, category: Optional[str] = None, overwrite: bool = False,
                progress: ProgressFn = noop, layers: Sequence[int] = DEFAULT_LAYERS) -> Run:
    """Train an STFPM student against the frozen teacher on a dataset's normal training images."""
    epochs, batch_size, learning_rate = training_settings(
        epochs, batch_size, learning_rate, defaults=(DEFAULT_EPOCHS, DEFAULT_BATCH_SIZE, DEFAULT_LEARNING_RATE),
        min_batch=2, why=" (the student's BatchNorm trains)")
    if image_size < 32 or image_size % 16:
        raise EdgekitError(f"--image-size must be a multiple of 16 and at least 32, not {image_size}")
    dataset: Dataset = data if isinstance(data, Dataset) else open_dataset(Path(data), category=category)
    writer = RunWriter(Path(out), overwrite=overwrite)
    with writer:
        started = time.perf_counter()
        torch.manual_seed(seed)
        config = {"model": "stfpm", "backbone": backbone, "layers": list(layers), "image_size": image_size,
                  "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
                  "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY, "seed": seed,
                  "head": dict(SCORE_RULE)}
        network = build_network(config, weights=weights, pretrained=True)
        config["layers"] = list(network.teacher.layers)
        spec = input_spec_for(backbone, image_size)
        trained_paths, held_paths = split_train_images(dataset, holdout, seed)
        history = _fit(network, prepare(trained_paths, spec), epochs=epochs, batch_size=batch_size,
                       learning_rate=learning_rate, seed=seed, progress=progress)
        writer.save_network(NETWORK_FILE, network)
        train_seconds = time.perf_counter() - started
        config.update({"input": input_config(spec), "parameters": parameter_count(network),
                       "trained_parameters": parameter_count(network.student),
                       "strides": list(network.teacher.strides), "channels": list(network.teacher.channels)})
        config.update(provenance(dataset, trained_paths, held_paths, train_seconds))
        run = Run(path=writer.tmp, config=config)
        metrics = evaluate_run(run, dataset, network=network, progress=progress)
        metrics.update({"epochs": epochs, "loss": history, "final_loss": history[-1]})
        writer.save_json("metrics.json", metrics)
        return writer.commit(config)


def evaluate_run(run: Run, dataset: Dataset, *, network: Optional[nn.Module] = None,
                 progress: ProgressFn = noop) -> dict:
    """Training-path image and pixel AUROC on the dataset's labelled test split."""
    return evaluate_map_run(run, dataset, score_run, default_rule=SCORE_RULE, network=network, progress=progress,
                            what="training (torch teacher/student map + numpy map head)")
