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
#: How an image of another aspect ratio meets the network's: resized to it (``stretch``), its
#: centre cut to the network's aspect first (``crop``), or fitted inside and padded with the
#: normalisation mean, which the network sees as 0 (``letterbox``).
FITS = ("stretch", "crop", "letterbox")
#: Most tiles per side of a tiled input (16 x 16 = 256 network inputs per image).
MAX_TILES_PER_SIDE = 16


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
    fit: str = "stretch"  # FITS
    roi: tuple[int, ...] = ()  # x, y, width, height in the source image's pixels, cut first; () = all of it
    tiles: tuple[int, ...] = ()  # rows, columns: the image is fitted to a grid of network inputs; () = one
    tile_overlap: int = 0  # pixels two neighbouring tiles share (network-input pixels)

    def __post_init__(self) -> None:
        for side in ("height", "width"):
            value = getattr(self, side)
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Integral)
                or not MIN_INPUT_SIDE <= value <= MAX_INPUT_SIDE
            ):
                raise EdgekitError(
                    f"input {side} must be an integer from {MIN_INPUT_SIDE} to {MAX_INPUT_SIDE}, not {value!r}"
                )
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise EdgekitError(f"input channels must be 1 or 3, not {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise EdgekitError("input mean/std must have one value per channel")
        for kind in ("mean", "std"):
            values = getattr(self, kind)
            if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                raise EdgekitError(f"input {kind} must be finite numbers, not {list(values)!r}")
        if any(value <= 0 for value in self.std):
            raise EdgekitError(
                f"input std must be positive, not {list(self.std)!r} (0 would divide every pixel by zero)"
            )
        if self.dtype != "float32":
            raise EdgekitError(f"input dtype must be float32, not {self.dtype!r}")
        if self.resize not in RESIZE_FILTERS:
            raise EdgekitError(f"unknown resize {self.resize!r}; known: {sorted(RESIZE_FILTERS)}")
        if self.layout not in ("NCHW", "NHWC"):
            raise EdgekitError(f"unknown layout {self.layout!r}; known: NCHW, NHWC")
        if self.fit not in FITS:
            raise EdgekitError(f"input fit must be one of {', '.join(FITS)}, not {self.fit!r}")
        if self.roi and (
            len(self.roi) != 4
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in self.roi)
            or min(self.roi[:2]) < 0
            or min(self.roi[2:]) < MIN_SIDE
        ):
            raise EdgekitError(
                f"input roi must be x,y,width,height with x,y >= 0 and sides >= {MIN_SIDE}, not {self.roi!r}"
            )
        if self.tiles and (
            len(self.tiles) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in self.tiles)
            or not all(1 <= v <= MAX_TILES_PER_SIDE for v in self.tiles)
        ):
            raise EdgekitError(
                f"input tiles must be rows,columns from 1 to {MAX_TILES_PER_SIDE} each, not {self.tiles!r}"
            )
        limit = min(self.height, self.width) // 2
        if (
            isinstance(self.tile_overlap, bool)
            or not isinstance(self.tile_overlap, numbers.Integral)
            or not (0 <= self.tile_overlap <= limit)
        ):
            raise EdgekitError(
                f"input tile_overlap must be a whole number of pixels from 0 to {limit} (half a tile), "
                f"not {self.tile_overlap!r}"
            )
        if max(self.map_size) > MAX_INPUT_SIDE:  # the fitted image and its map are this large
            raise EdgekitError(
                f"input tiles {self.tiles[0]}x{self.tiles[1]} of {self.width}x{self.height} cover "
                f"{self.map_size[1]}x{self.map_size[0]} pixels; at most {MAX_INPUT_SIDE} a side"
            )

    @property
    def tile_count(self) -> int:
        """Network inputs per image: 1, or rows x columns of a tiled input."""
        return self.tiles[0] * self.tiles[1] if self.tiles else 1

    @property
    def map_size(self) -> tuple[int, int]:
        """(height, width) an image is fitted to and its anomaly map has: the network's input, or
        the grid of overlapping tiles a tiled input covers."""
        rows, cols = self.tiles or (1, 1)
        step_y, step_x = self.height - self.tile_overlap, self.width - self.tile_overlap
        return (rows - 1) * step_y + self.height, (cols - 1) * step_x + self.width

    def tile_origins(self) -> list[tuple[int, int]]:
        """(top, left) of every tile in the fitted image, row by row ([(0, 0)] untiled)."""
        rows, cols = self.tiles or (1, 1)
        step_y, step_x = self.height - self.tile_overlap, self.width - self.tile_overlap
        return [(row * step_y, col * step_x) for row in range(rows) for col in range(cols)]


#: Decoded-pixel cap: a 50-megapixel RGB image is 150 MB of uint8, and more again while it is
#: resized; a Raspberry Pi with 1-4 GB must refuse larger ones before decoding them.
DEFAULT_MAX_PIXELS = 50_000_000
#: Smallest image side accepted: anything smaller carries no texture to judge.
MIN_SIDE = 2


class ImageRejected(EdgekitError):
    """An image refused before scoring; ``reason`` is "unreadable", "too-large", "too-small" or "corrupt"."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_image(source: ImageLike, channels: int = 3, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Return an HxWxC uint8 array with ``channels`` channels from a path or an array.

    Grey input for a colour model is replicated to three channels and colour input for a grey
    model is converted with ITU-R 601-2 luma (Pillow's ``L``), so one camera fits both. Files are
    turned upright by their EXIF orientation, and refused when the header says more than
    ``max_pixels`` (before any pixel is decoded) or a side is under ``MIN_SIDE``; so are arrays (a
    broadcast view can claim any shape without holding its memory). Arrays are uint8,
    or float32/float64 intensities in [0, 1] (scaled by 255 and rounded; other float values are
    refused, since 0-255 floats and [0, 1] floats cannot be told apart safely).
    """
    mode = "RGB" if channels == 3 else "L"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise EdgekitError(f"{path}: no such image file")
        array = _decode(path, mode, str(path), max_pixels)
    elif isinstance(source, np.ndarray):
        array = _array_to_mode(source, mode, max_pixels=max_pixels)
    else:
        raise EdgekitError(f"an image must be a path or an HxWxC uint8 array, not {type(source).__name__}")
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array)


def decode_image(
    data: bytes, channels: int = 3, *, label: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, ...) → HxWxC uint8, as :func:`read_image` reads a file."""
    import io

    array = _decode(io.BytesIO(data), "RGB" if channels == 3 else "L", label, max_pixels)
    return np.ascontiguousarray(array if array.ndim == 3 else array[:, :, None])


def _decode(source, mode: str, label: str, max_pixels: int) -> np.ndarray:
    """Open (lazily: the header only), check the size, then decode, rotate upright and convert."""
    from PIL import Image, ImageOps

    try:
        img = Image.open(source)
    except Image.DecompressionBombError:
        raise ImageRejected(
            f"{label}: the image is too large to decode (over Pillow's own limit of "
            f"{2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels)",
            "too-large",
        ) from None
    except Exception as exc:  # UnidentifiedImageError, or whatever a malformed header makes a plugin raise
        raise ImageRejected(f"{label}: not a readable image ({exc.__class__.__name__})", "unreadable") from None
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageRejected(
                f"{label}: the image is {width}x{height} ({width * height / 1e6:.1f} megapixels); "
                f"the limit is {max_pixels / 1e6:g} megapixels",
                "too-large",
            )
        if min(width, height) < MIN_SIDE:
            raise ImageRejected(f"{label}: the image is too small: {width}x{height}", "too-small")
        try:
            upright = ImageOps.exif_transpose(img)  # decodes; a camera JPEG shot rotated is scored upright
            if upright.mode == "F":  # 32-bit float (TIFF): the same [0, 1] rule as float arrays
                return _array_to_mode(np.asarray(upright), mode, label)
            if upright.mode in ("I;16", "I;16B", "I;16L", "I"):
                upright = upright.point(lambda v: v / 256).convert("L")
            return np.asarray(upright.convert(mode))
        except EdgekitError:  # the float rule's own message
            raise
        except Exception as exc:
            raise ImageRejected(
                f"{label}: the image is truncated or corrupt ({exc.__class__.__name__})", "corrupt"
            ) from None


def _array_to_mode(
    array: np.ndarray, mode: str, label: str = "image", *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    from PIL import Image

    if array.ndim >= 2 and array.shape[0] * array.shape[1] > max_pixels:  # a broadcast view holds any shape
        height, width = array.shape[:2]
        raise ImageRejected(
            f"{label}: the image is {width}x{height} ({width * height / 1e6:.1f} megapixels); "
            f"the limit is {max_pixels / 1e6:g} megapixels",
            "too-large",
        )
    if array.dtype in (np.float32, np.float64):
        array = _float_to_uint8(array, label)
    if array.dtype != np.uint8:
        raise EdgekitError(f"{label}: image arrays must be uint8 (0-255) or float in [0, 1], not {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or array.ndim == 3 and array.shape[2] not in (3, 4):
        raise EdgekitError(f"{label}: image arrays must be HxW, HxWx1, HxWx3 or HxWx4, not {array.shape}")
    if array.shape[0] < MIN_SIDE or array.shape[1] < MIN_SIDE:
        raise ImageRejected(f"{label}: the image is too small: {array.shape[1]}x{array.shape[0]}", "too-small")
    if array.ndim == 2:
        return array if mode == "L" else np.repeat(array[:, :, None], 3, axis=2)
    if mode == "RGB":
        return array[:, :, :3]
    return np.asarray(Image.fromarray(array[:, :, :3], "RGB").convert("L"))


def _float_to_uint8(array: np.ndarray, label: str) -> np.ndarray:
    """Float intensities in [0, 1] → uint8 0-255 (rounded); anything else is refused."""
    if array.size == 0:
        raise ImageRejected(f"{label}: the image is empty: shape {array.shape}", "too-small")
    low, high = float(np.min(array)), float(np.max(array))
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 1.0:
        raise EdgekitError(
            f"{label}: a float image must hold finite values in [0, 1] (it holds {low:g} to "
            f"{high:g}); pass 0-255 data as uint8"
        )
    return np.rint(array * 255.0).astype(np.uint8)


def resize(image: np.ndarray, height: int, width: int, method: str = "pil-bilinear") -> np.ndarray:
    """Resize an HxWxC uint8 image with the named algorithm; returns HxWxC uint8."""
    from PIL import Image

    if image.shape[0] == height and image.shape[1] == width:
        return image
    squeezed = image[:, :, 0] if image.shape[2] == 1 else image
    out = np.asarray(Image.fromarray(squeezed).resize((width, height), RESIZE_FILTERS[method]))
    return out[:, :, None] if out.ndim == 2 else out


def parse_roi(text: str) -> tuple[int, ...]:
    """``"x,y,w,h"`` → a 4-tuple of integers (checked by InputSpec); one clear line otherwise."""
    try:
        values = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise EdgekitError(f"--roi must be x,y,width,height in pixels, e.g. 120,40,800,600, not {text!r}")
    return values


def parse_tiles(text: str) -> tuple[int, ...]:
    """``"RxC"`` (or ``"R,C"``) → (rows, columns) (checked by InputSpec); one clear line otherwise."""
    try:
        values = tuple(int(part) for part in str(text).lower().replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 2:
        raise EdgekitError(f"--tiles must be rows x columns, e.g. 4x4, not {text!r}")
    return values


def fit_to(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The spec's geometry on an HxWxC uint8 image: cut the region of interest, then stretch, crop
    or letterbox it to ``spec.map_size`` (the network's height × width, or its grid of tiles)."""
    if spec.roi:
        x, y, w, h = spec.roi
        if x + w > image.shape[1] or y + h > image.shape[0]:
            raise EdgekitError(
                f"region of interest {x},{y},{w},{h} does not fit in a {image.shape[1]}x{image.shape[0]} image"
            )
        image = image[y : y + h, x : x + w]
    rows, cols = image.shape[:2]
    height, width = spec.map_size
    if spec.fit == "crop":
        scale = min(rows / height, cols / width)
        keep_rows, keep_cols = max(1, round(height * scale)), max(1, round(width * scale))
        top, left = (rows - keep_rows) // 2, (cols - keep_cols) // 2
        image = image[top : top + keep_rows, left : left + keep_cols]
    elif spec.fit == "letterbox":
        scale = min(height / rows, width / cols)
        inner_rows = min(height, max(1, round(rows * scale)))
        inner_cols = min(width, max(1, round(cols * scale)))
        fill = np.rint(np.asarray(spec.mean) * 255.0).clip(0, 255).astype(np.uint8)
        canvas = np.empty((height, width, image.shape[2]), dtype=np.uint8)
        canvas[...] = fill
        top, left = (height - inner_rows) // 2, (width - inner_cols) // 2
        canvas[top : top + inner_rows, left : left + inner_cols] = resize(image, inner_rows, inner_cols, spec.resize)
        return canvas
    return resize(image, height, width, spec.resize)


def prepare(images: Iterable[ImageLike], spec: InputSpec, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Images (paths, uint8 arrays or [0, 1] float arrays) → one float32 batch in the network's
    layout; a tiled spec gives ``spec.tile_count`` inputs per image, image by image, row by row."""
    batch = []
    origins = spec.tile_origins()
    for source in images:
        fitted = fit_to(read_image(source, spec.channels, max_pixels=max_pixels), spec)
        batch.extend(fitted[top : top + spec.height, left : left + spec.width] for top, left in origins)
    if not batch:
        raise EdgekitError("no images given")
    stacked = np.stack(batch).astype(np.float32) / np.float32(255.0)
    stacked -= np.asarray(spec.mean, dtype=np.float32)
    stacked /= np.asarray(spec.std, dtype=np.float32)
    if spec.layout == "NCHW":
        stacked = stacked.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(stacked, dtype=np.float32)


def stitch(scores: np.ndarray, maps: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """A head's per-input scores (N*T,) and maps (N*T, h, w) → per image (N,) and (N, *map_size):
    the image score is its worst tile's, each map pixel the largest any tile covering it gives, so
    a defect on a tile seam is seen by both tiles. Untiled input passes through."""
    if not spec.tiles:
        return scores, maps
    count = spec.tile_count
    if len(scores) % count:
        raise EdgekitError(f"{len(scores)} network outputs do not make whole images of {count} tiles")
    images = len(scores) // count
    height, width = spec.map_size
    stitched = np.full((images, height, width), -np.inf, dtype=maps.dtype)
    grouped = maps.reshape(images, count, *maps.shape[1:])
    for tile, (top, left) in enumerate(spec.tile_origins()):
        window = stitched[:, top : top + spec.height, left : left + spec.width]
        np.maximum(window, grouped[:, tile], out=window)
    return np.asarray(scores).reshape(images, count).max(axis=1), stitched
