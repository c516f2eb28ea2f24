"""Heat-map overlays: an anomaly map blended over its image, as a PNG. numpy + Pillow."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

# A perceptually ordered blue → cyan → yellow → red ramp (5 anchors, linearly interpolated).
_ANCHORS = np.array([[0, 0, 128], [0, 160, 255], [255, 255, 0], [255, 96, 0], [200, 0, 0]], dtype=np.float64)


def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] → HxWx3 uint8 colours."""
    position = np.clip(values, 0, 1) * (len(_ANCHORS) - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(_ANCHORS) - 1)
    frac = (position - low)[..., None]
    return (_ANCHORS[low] * (1 - frac) + _ANCHORS[high] * frac).astype(np.uint8)


def blend(image: np.ndarray, anomaly_map: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """The (normalised) map, resized to the HxWxC uint8 image, blended over it: HxWx3 uint8."""
    from PIL import Image

    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]
    heat = Image.fromarray((np.clip(anomaly_map, 0, 1) * 255).astype(np.uint8)).resize(
        (rgb.shape[1], rgb.shape[0]), Image.BILINEAR
    )
    colours = colorize(np.asarray(heat) / 255.0)
    return (rgb * (1 - alpha) + colours * alpha).astype(np.uint8)


def write_overlay(image: np.ndarray, anomaly_map: np.ndarray, path: Path, *, alpha: float = 0.45) -> Path:
    """``blend`` written as a PNG; atomic write."""
    from PIL import Image

    blended = blend(image, anomaly_map, alpha=alpha)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    Image.fromarray(blended).save(tmp)
    os.replace(tmp, path)
    return path
