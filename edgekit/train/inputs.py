"""The input rule of an ImageNet backbone and the torch pass over images prepared by the one pre-processing."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from edgekit.preprocess import ImageLike, InputSpec, prepare
from edgekit.progress import ProgressFn, noop
from edgekit.train.backbones import get_backbone_spec


def input_spec_for(backbone: str, image_size: int) -> InputSpec:
    spec = get_backbone_spec(backbone)
    return InputSpec(height=image_size, width=image_size, channels=3, mean=tuple(spec.mean), std=tuple(spec.std))


def embed(
    network: nn.Module,
    images: Sequence[ImageLike],
    spec: InputSpec,
    *,
    batch_size: int = 8,
    progress: ProgressFn = noop,
    stage: str = "embedding",
) -> np.ndarray:
    """Run the torch network on images prepared by the one pre-processing: (N, D, h, w) float32, or
    (N·tiles, D, h, w) for a tiled input, at most ``batch_size`` network inputs at a time."""
    outputs = []
    progress(stage, 0, len(images))
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = prepare(images[start : start + batch_size], spec)
            for first in range(0, len(batch), batch_size):
                outputs.append(network(torch.from_numpy(batch[first : first + batch_size])).float().numpy())
            progress(stage, min(start + batch_size, len(images)), len(images))
    return np.concatenate(outputs)
