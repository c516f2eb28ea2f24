"""The one pre-processing: every stage that turns an image into network input calls this module.

Training, threshold fitting, export calibration and the device runtime all resize and normalise
through :func:`prepare`, so a score computed on the host equals the device's score for the same
image. numpy + Pillow only: the device imports it.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Union

import numpy as np

from edgekit.errors import EdgekitError

ImageLike = Union[str, Path, np.ndarray]

#: Resize algorithms a manifest may name, mapped to Pillow's resampling filters.
RESIZE_FILTERS = {"pil-bilinear": 2, "pil-bicubic": 3, "pil-nearest": 0}
#: Network input sides a manifest may ask for (the heads build side×side operators: bounded memory).
MIN_INPUT_SIDE, MAX_INPUT_SIDE = 8, 4096


@dataclass(frozen=True)
class InputSpec:
    """What the network expects, and exactly how an image becomes that."""

    height: int
    width: int
    channels: int  # 3 = RGB, 1 = grey
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "pil-bilinear"
    layout: str = "NCHW"
    dtype: str = "float32"
    name: str = "image"

    def __post_init__(self) -> None:
        for side in ("height", "width"):
            value = getattr(self, side)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or \
                    not MIN_INPUT_SIDE <= value <= MAX_INPUT_SIDE:
                raise EdgekitError(f"input {side} must be an integer from {MIN_INPUT_SIDE} to {MAX_INPUT_SIDE}, "
                                   f"not {value!r}")
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise EdgekitError(f"input channels must be 1 or 3, not {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise EdgekitError("input mean/std must have one value per channel")
        for kind in ("mean", "std"):
            values = getattr(self, kind)
            if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                raise EdgekitError(f"input {kind} must be finite numbers, not {list(values)!r}")
        if any(value <= 0 for value in self.std):
            raise EdgekitError(f"input std must be positive, not {list(self.std)!r} "
                               "(0 would divide every pixel by zero)")
        if self.dtype != "float32":
            raise EdgekitError(f"input dtype must be float32, not {self.dtype!r}")
        if self.resize not in RESIZE_FILTERS:
            raise EdgekitError(f"unknown resize {self.resize!r}; known: {sorted(RESIZE_FILTERS)}")
        if self.layout not in ("NCHW", "NHWC"):
            raise EdgekitError(f"unknown layout {self.layout!r}; known: NCHW, NHWC")


def read_image(source: ImageLike, channels: int = 3) -> np.ndarray:
    """Return an HxWxC uint8 array with ``channels`` channels from a path or an array.

    Grey input for a colour model is replicated to three channels and colour input for a grey
    model is converted with ITU-R 601-2 luma (Pillow's ``L``), so one camera fits both.
    """
    mode = "RGB" if channels == 3 else "L"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise EdgekitError(f"{path}: no such image file")
        array = _decode(path, mode, str(path))
    elif isinstance(source, np.ndarray):
        array = _array_to_mode(source, mode)
    else:
        raise EdgekitError(f"an image must be a path or an HxWxC uint8 array, not {type(source).__name__}")
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array)


def decode_image(data: bytes, channels: int = 3, *, label: str = "image") -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, ...) → HxWxC uint8, as :func:`read_image` reads a file."""
    import io

    array = _decode(io.BytesIO(data), "RGB" if channels == 3 else "L", label)
    return np.ascontiguousarray(array if array.ndim == 3 else array[:, :, None])


def _decode(source, mode: str, label: str) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(source) as img:
            img.load()
            img = ImageOps.exif_transpose(img)  # a phone or camera JPEG shot rotated is scored upright
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                img = img.point(lambda v: v / 256).convert("L")
            return np.asarray(img.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise EdgekitError(f"{label}: not a readable image ({exc.__class__.__name__})") from None


def _array_to_mode(array: np.ndarray, mode: str) -> np.ndarray:
    from PIL import Image

    if array.dtype != np.uint8:
        raise EdgekitError(f"image arrays must be uint8 (0-255), not {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return array if mode == "L" else np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise EdgekitError(f"image arrays must be HxW, HxWx1, HxWx3 or HxWx4, not {array.shape}")
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise EdgekitError(f"image is too small: {array.shape[1]}x{array.shape[0]}")
    if mode == "RGB":
        return array[:, :, :3]
    return np.asarray(Image.fromarray(array[:, :, :3], "RGB").convert("L"))


def resize(image: np.ndarray, height: int, width: int, method: str = "pil-bilinear") -> np.ndarray:
    """Resize an HxWxC uint8 image with the named algorithm; returns HxWxC uint8."""
    from PIL import Image

    if image.shape[0] == height and image.shape[1] == width:
        return image
    squeezed = image[:, :, 0] if image.shape[2] == 1 else image
    out = np.asarray(Image.fromarray(squeezed).resize((width, height), RESIZE_FILTERS[method]))
    return out[:, :, None] if out.ndim == 2 else out


def prepare(images: Iterable[ImageLike], spec: InputSpec) -> np.ndarray:
    """Images (paths or uint8 arrays) → one float32 batch in the network's layout."""
    batch = []
    for source in images:
        pixels = resize(read_image(source, spec.channels), spec.height, spec.width, spec.resize)
        batch.append(pixels)
    if not batch:
        raise EdgekitError("no images given")
    stacked = np.stack(batch).astype(np.float32) / np.float32(255.0)
    stacked -= np.asarray(spec.mean, dtype=np.float32)
    stacked /= np.asarray(spec.std, dtype=np.float32)
    if spec.layout == "NCHW":
        stacked = stacked.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(stacked, dtype=np.float32)
