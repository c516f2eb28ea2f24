"""What the families whose network outputs the anomaly map share on the host.

The autoencoders, STFPM, FastFlow, Reverse Distillation and EfficientAD all export one graph
image → (N, 1, h, w) map; the device post-processes it with :class:`edgekit.runtime.heads.MapHead`
(up-sampling, blur, image-score rule). The training path runs the same torch graph and the same
numpy head, so a bundle's scores equal the run's up to the runtime's float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.preprocess import ImageLike, InputSpec, stitch
from edgekit.progress import ProgressFn, noop
from edgekit.runtime.heads import MapHead
from edgekit.train.inputs import embed
from edgekit.train.run import Run, evaluate_on_test_split, load_weights


def map_outputs(
    network: nn.Module,
    images: Sequence[ImageLike],
    spec: InputSpec,
    *,
    batch_size: int = 8,
    progress: ProgressFn = noop,
    stage: str = "scoring",
) -> np.ndarray:
    """``network`` (image → map) in eval mode, run in torch on prepared ``images``: float32 (N, 1, h, w)."""
    network.eval()
    return embed(network, images, spec, batch_size=batch_size, progress=progress, stage=stage)


def map_head_for(run: Run, default_rule: Mapping[str, object]) -> MapHead:
    """The run's map head: its ``head`` config (the rule it was scored with) at its input size."""
    size = run.input_spec()
    return MapHead.from_params(
        run.config.get("head", default_rule), {}, output_height=size.height, output_width=size.width
    )


@dataclass(frozen=True)
class Schedule:
    """How an epoch-trained family trains: --epochs, --batch-size and --learning-rate (checked by
    ``training_settings``), the run's seed (batch order) and its progress function."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int = 0
    progress: ProgressFn = noop


def train_epochs(
    step: Callable[[torch.Tensor], float], images: np.ndarray, schedule: Schedule, *, min_batch: int = 1
) -> list[float]:
    """Call ``step(batch)`` (forward, backward, optimiser step; returns the batch's mean loss) over
    ``images`` for ``schedule.epochs`` epochs, reshuffled each epoch by a seeded generator.

    A last batch smaller than ``min_batch`` is left out of that epoch (BatchNorm cannot train on
    one image) unless it is the only one. Returns the mean loss per epoch.
    """
    epochs, batch_size, seed, progress = schedule.epochs, schedule.batch_size, schedule.seed, schedule.progress
    order_rng = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(np.ascontiguousarray(images))
    history = []
    progress("train", 0, epochs)
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=order_rng)
        total, seen = 0.0, 0
        for start in range(0, len(data), batch_size):
            batch = data[order[start : start + batch_size]]
            if len(batch) < min_batch and seen:
                continue
            total += float(step(batch)) * len(batch)
            seen += len(batch)
        history.append(round(total / max(seen, 1), 6))
        progress("train", epoch + 1, epochs)
    return history


def parameter_count(network: nn.Module) -> int:
    return int(sum(p.numel() for p in network.parameters()))


def training_settings(
    epochs: Optional[int],
    batch_size: Optional[int],
    learning_rate: Optional[float],
    how: Any,
    *,
    defaults: Any,
    min_batch: int = 1,
    why: str = "",
) -> Schedule:
    """The user's --epochs / --batch-size / --learning-rate, or the defaults of the family's options
    dataclass (``defaults.epochs``, ...), checked, with the run's seed and progress (``how``)."""
    epochs = defaults.epochs if epochs is None else int(epochs)
    batch_size = defaults.batch_size if batch_size is None else int(batch_size)
    learning_rate = defaults.learning_rate if learning_rate is None else float(learning_rate)
    if epochs < 1:
        raise EdgekitError(f"--epochs must be at least 1, not {epochs}")
    if batch_size < min_batch:
        raise EdgekitError(f"--batch-size must be at least {min_batch}{why}, not {batch_size}")
    if not learning_rate > 0:
        raise EdgekitError(f"--learning-rate must be positive, not {learning_rate}")
    return Schedule(epochs, batch_size, learning_rate, seed=how.seed, progress=how.progress)


class MapScoring:
    """The training path of one map family: load a run's network, score images with the torch graph
    and the run's MapHead, evaluate on a test split. ``build(config)`` makes the family's network
    (weights are loaded from ``network_file`` after); ``rule`` is the score rule a run without a
    ``head`` config was scored with; ``what`` names the path in metrics.json."""

    def __init__(
        self,
        build: Callable[[dict], nn.Module],
        rule: Mapping[str, object],
        what: str,
        *,
        network_file: str = "network.safetensors",
        batch_size: int = 8,
        maps: Callable[..., np.ndarray] = map_outputs,
    ) -> None:
        self.build, self.rule, self.what = build, dict(rule), what
        self.network_file, self.batch_size, self.maps = network_file, batch_size, maps

    def load_network(self, run: Run) -> nn.Module:
        """The run's network from its config and safetensors weights (nothing read elsewhere)."""
        return load_weights(self.build(dict(run.config)), run, self.network_file)

    def head_for(self, run: Run) -> MapHead:
        return map_head_for(run, self.rule)

    def score_run(
        self,
        run: Run,
        images: Sequence[ImageLike],
        *,
        network: Optional[nn.Module] = None,
        batch_size: Optional[int] = None,
        progress: ProgressFn = noop,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores (N,) and maps (N, H, W): the torch graph's maps + the shared MapHead (a tiled
        input's tiles stitched per image)."""
        network = network if network is not None else self.load_network(run)
        spec = run.input_spec()
        maps = self.maps(network, images, spec, batch_size=batch_size or self.batch_size, progress=progress)
        return stitch(*self.head_for(run)(maps), spec)

    def evaluate_run(
        self, run: Run, dataset, *, network: Optional[nn.Module] = None, progress: ProgressFn = noop
    ) -> dict:
        """Training-path image and pixel AUROC on the dataset's labelled test split, and the rule."""
        metrics = evaluate_on_test_split(
            run, dataset, lambda images: self.score_run(run, images, network=network, progress=progress), self.what
        )
        return {**metrics, "score_rule": dict(run.config.get("head", self.rule))} if dataset.test else metrics
