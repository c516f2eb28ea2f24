"""STFPM (Student-Teacher Feature Pyramid Matching, Wang et al. 2021) on the host.

A frozen ImageNet teacher from the offline registry and a student of the same architecture,
trained from random init to reproduce the teacher's L2-normalised features at several pyramid
levels (anomalib's ``STFPMLoss``, imported). The anomaly map is anomalib's: per level
0.5·||norm(t) − norm(s)||² over channels, up-sampled bilinearly and multiplied over the levels.
What differs from anomalib, for deployment: the teacher comes from edgekit's registry (no
download), the levels are chosen for EfficientNet-Lite0 (levels 1, 2, 3 = strides 4, 8, 16, as
anomalib's resnet18 layer1-3), and the product is taken at the first level's grid (64×64 at 256²)
inside the exported graph (:class:`StfpmNetwork`); the numpy MapHead up-samples it to the input
size, blurs and scores it on the device, the same code the training path runs.

Map at the first level's grid vs anomalib's product at the input size (measured on the runs
below, every rule and blur): image and pixel AUROC within 0.015 of each other (mostly < 0.005),
while the grid map is 16× smaller (16 KB vs 256 KB out of the network, no 256² resizes in the
graph) and the head's up-sampling + blur works on 64×64 instead of 256×256 (MapHead.cost).

Defaults, measured on the synthetic data (256², seed 0, 48 training images; epochs 2/4 brick,
3/6/10 grass and gravel), SGD as anomalib (lr 0.4, momentum 0.9, weight decay 1e-3), batch 8:

    mean training loss by epoch    1     2     3     4     5     6     10
      brick                        16.5  6.7   4.9   4.3   -     -     -
      grass                        20.5  13.5  11.0  10.0  9.3   8.7   6.9
      gravel                       20.4  13.1  10.5  9.3   8.5   7.8   6.2
    image AUROC (top 1 %, blur σ=4) / pixel AUROC (blur σ=4)
      brick      epoch 2: 0.843/0.790   epoch 4: 1.000/0.992
      grass      epoch 3: 0.679/0.768   epoch 6: 0.902/0.856   epoch 10: 0.906/0.906
      gravel     epoch 3: 0.688/0.752   epoch 6: 0.866/0.901   epoch 10: 0.935/0.916

The loss still falls at 10 epochs (anomalib trains 100) and gravel gains most between 6 and 10;
an epoch of the 48 images cost 31-54 s on the 2 shared cores at load 8-10 (up to 200 s at load
20; channels-last, see _fit), so the default run takes about 5 minutes on a lightly loaded
machine; brick, the embedded default, is at 1.000 image AUROC from epoch 4.

Image score rule (SCORE_RULE): the mean of the top 1 % of the map after a Gaussian blur of
σ = 4 px. At 10 epochs (brick at 4), image AUROC of each rule (blur σ = 2 / 4 / 8 px):

                 max                  mean      top 1 %              pixel AUROC
      brick      0.989/0.995/0.999    1.000     1.000/1.000/1.000    0.990/0.992/0.993
      grass      0.815/0.851/0.890    0.865     0.910/0.906/0.910    0.887/0.906/0.927
      gravel     0.904/0.897/0.887    0.966     0.959/0.935/0.921    0.894/0.916/0.940

The top 1 % is the best on average (the whole-image mean is best on gravel but worst on grass,
and dilutes a defect in proportion to its area); the raw maximum is the worst. σ = 4 is the
compromise between the image AUROC (best at σ = 2) and the pixel AUROC (best at σ = 8).
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
