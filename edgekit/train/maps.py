"""What the families whose network outputs the anomaly map share on the host.

The autoencoders, STFPM, FastFlow, Reverse Distillation and EfficientAD all export one graph
image → (N, 1, h, w) map; the device post-processes it with :class:`edgekit.runtime.heads.MapHead`
(up-sampling, blur, image-score rule). The training path runs the same torch graph and the same
numpy head, so a bundle's scores equal the run's up to the runtime's float rounding.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.preprocess import ImageLike, InputSpec, prepare
from edgekit.progress import ProgressFn, noop
from edgekit.runtime.heads import MapHead
from edgekit.train.run import Run, metrics_on_test_split


def map_outputs(network: nn.Module, images: Sequence[ImageLike], spec: InputSpec, *, batch_size: int = 8,
                progress: ProgressFn = noop, stage: str = "scoring") -> np.ndarray:
    """``network`` (image → map) run in torch on prepared ``images``: float32 (N, 1, h, w)."""
    network.eval()
    outputs = []
    progress(stage, 0, len(images))
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            outputs.append(network(torch.from_numpy(prepare(images[start:start + batch_size], spec))).float().numpy())
            progress(stage, min(start + batch_size, len(images)), len(images))
    return np.concatenate(outputs)


def map_head_for(run: Run, default_rule: Mapping[str, object]) -> MapHead:
    """The run's map head: its ``head`` config (the rule it was scored with) at its input size."""
    size = run.input_spec()
    return MapHead.from_params(run.config.get("head", default_rule), {}, output_height=size.height,
                               output_width=size.width)


def load_weights(network: nn.Module, run: Run, file_name: str) -> nn.Module:
    """Load a run's safetensors weights strictly into ``network``; returns it in eval mode."""
    from safetensors.torch import load_file

    weights_path = run.path / file_name
    if not weights_path.is_file():
        raise EdgekitError(f"run {run.path}: {file_name} is missing")
    network.load_state_dict(load_file(str(weights_path)), strict=True)
    return network.eval()


def train_epochs(step: Callable[[torch.Tensor], float], images: np.ndarray, *, epochs: int, batch_size: int,
                 seed: int, progress: ProgressFn = noop, stage: str = "train",
                 min_batch: int = 1) -> list[float]:
    """Call ``step(batch)`` (forward, backward, optimiser step; returns the batch's mean loss) over
    ``images`` for ``epochs`` epochs, reshuffled each epoch by a seeded generator.

    A last batch smaller than ``min_batch`` is left out of that epoch (BatchNorm cannot train on
    one image) unless it is the only one. Returns the mean loss per epoch.
    """
    if epochs < 1:
        raise EdgekitError(f"--epochs must be at least 1, not {epochs}")
    if batch_size < min_batch:
        raise EdgekitError(f"--batch-size must be at least {min_batch}, not {batch_size}")
    order_rng = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(np.ascontiguousarray(images))
    history = []
    progress(stage, 0, epochs)
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=order_rng)
        total, seen = 0.0, 0
        for start in range(0, len(data), batch_size):
            batch = data[order[start:start + batch_size]]
            if len(batch) < min_batch and seen:
                continue
            total += float(step(batch)) * len(batch)
            seen += len(batch)
        history.append(round(total / max(seen, 1), 6))
        progress(stage, epoch + 1, epochs)
    return history


def split_train_images(dataset, holdout: float, seed: int) -> tuple[list, list]:
    """(trained on, held out) training-image paths: the held-out normals fit the thresholds later."""
    from edgekit.data.splits import split_normals

    paths = [s.path for s in dataset.train]
    trained, held = split_normals(len(paths), holdout, seed)
    return [paths[i] for i in trained], [paths[i] for i in held]


def parameter_count(network: nn.Module) -> int:
    return int(sum(p.numel() for p in network.parameters()))


def input_config(spec: InputSpec) -> dict:
    """The ``input`` block of run.json (the bundle's pre-processing is read from it)."""
    return {"height": spec.height, "width": spec.width, "channels": spec.channels, "mean": list(spec.mean),
            "std": list(spec.std), "resize": spec.resize}


def training_settings(epochs: Optional[int], batch_size: Optional[int], learning_rate: Optional[float], *,
                      defaults: tuple[int, int, float], min_batch: int = 1,
                      why: str = "") -> tuple[int, int, float]:
    """The user's --epochs / --batch-size / --learning-rate, or the model's ``defaults``, checked."""
    epochs = defaults[0] if epochs is None else int(epochs)
    batch_size = defaults[1] if batch_size is None else int(batch_size)
    learning_rate = defaults[2] if learning_rate is None else float(learning_rate)
    if epochs < 1:
        raise EdgekitError(f"--epochs must be at least 1, not {epochs}")
    if batch_size < min_batch:
        raise EdgekitError(f"--batch-size must be at least {min_batch}{why}, not {batch_size}")
    if not learning_rate > 0:
        raise EdgekitError(f"--learning-rate must be positive, not {learning_rate}")
    return epochs, batch_size, learning_rate


def score_map_run(run: Run, images: Sequence[ImageLike], network: Optional[nn.Module],
                  load_network: Callable[[Run], nn.Module], default_rule: Mapping[str, object], *,
                  batch_size: int = 8, progress: ProgressFn = noop) -> tuple[np.ndarray, np.ndarray]:
    """The training path of a map family: the torch graph's maps + the run's MapHead, (N,), (N, H, W)."""
    network = network if network is not None else load_network(run)
    maps = map_outputs(network, images, run.input_spec(), batch_size=batch_size, progress=progress)
    return map_head_for(run, default_rule)(maps)


def evaluate_map_run(run: Run, dataset, score_run: Callable, *, what: str, default_rule: Mapping[str, object],
                     network: Optional[nn.Module] = None, progress: ProgressFn = noop) -> dict:
    """Training-path image and pixel AUROC on the dataset's labelled test split (``what`` scored)."""
    if not dataset.test:
        return {"test_images": 0}
    size = int(run.config["image_size"])
    scores, maps = score_run(run, [s.path for s in dataset.test], network=network, progress=progress)
    return {**metrics_on_test_split(dataset, scores, maps, size, what),
            "score_rule": dict(run.config.get("head", default_rule))}
