"""The embedded default data: MVTec-AD-style categories cut from real texture photos.

Source photos are the CC0 textures scikit-image bundles (``skimage.data.brick``, ``grass``,
``gravel``; 512x512 grey), so the data needs no download and is the same on every machine.

Geometry (source-photo pixels, boxes are ``(x0, y0, x1, y1)``, end exclusive):

- Test region: the bottom-right quarter ``(256, 256, 512, 512)``. Every test crop (good and
  defective) lies inside it.
- Train region: the rest of the photo (an L shape). A train crop is any box that does not
  overlap the test region, so train and test never share a source pixel.
- Each crop is a ``CROP_SIDE`` x ``CROP_SIDE`` (160x160) box at a random position, resized with
  Pillow's bicubic filter to ``size`` x ``size``, then randomly flipped (left-right, up-down).

Colour output tints the grey photo per texture (``TINTS``: brick red-brown, grass green, gravel
warm grey), scaled so that ITU-R 601 luma equals the grey value (clipped at 255). ``grayscale``
writes the grey crop itself, so ``--grayscale --size 128`` is the 128x128 grey variant.

Defects (the four kinds of the classic synthetic benchmark) are drawn as hard-edged regions on
the output-size image. Every pixel of the region is changed and nothing outside it, so the
written mask (0/255) is exactly the set of changed pixels. A defect is kept only when the mean
absolute change over the masked pixels and channels is at least ``MIN_CONTRAST`` (0-255 units)
and the mask covers ``AREA_FRACTION`` of the image; otherwise the next random draw is used.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image, ImageDraw

from edgekit.errors import EdgekitError
from edgekit.staging import make_staging, refuse_unowned

TEXTURES = ("brick", "grass", "gravel")
DEFECT_KINDS = ("scratch", "stain", "missing", "discolor")

PHOTO_SIDE = 512
CROP_SIDE = 160
TEST_REGION = (256, 256, 512, 512)
#: Minimum mean |defect - original| over masked pixels and channels, in 0-255 units.
MIN_CONTRAST = 24.0
#: Allowed share of the image a defect mask covers (inclusive bounds).
AREA_FRACTION = (0.005, 0.08)
#: Random draws tried per defect before giving up (a draw that fails the checks is discarded).
MAX_DRAWS = 200
MIN_SIZE, MAX_SIZE = 32, 1024
#: Per-texture RGB tint for colour output (relative channel gains before luma normalisation).
TINTS = {"brick": (1.0, 0.78, 0.66), "grass": (0.74, 0.96, 0.58), "gravel": (1.0, 0.95, 0.86)}
#: The unrelated texture a "missing" defect may paste in.
FILLER_TEXTURE = {"brick": "gravel", "grass": "brick", "gravel": "grass"}
_LUMA = np.array([0.299, 0.587, 0.114])
#: Discolouration directions in RGB: yellowing, darkening, bleaching, rust, scorch.
_DISCOLOR_DIRECTIONS = np.array(
    [[1.0, 0.8, 0.25], [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [0.9, 0.45, 0.1], [-0.4, -0.9, -1.0]]
)

Box = tuple[int, int, int, int]
Progress = Callable[[int, int], None]


def synthesize(
    out: Path,
    *,
    texture: str = "brick",
    size: int = 256,
    seed: int = 0,
    grayscale: bool = False,
    n_train: int = 60,
    n_test_good: int = 20,
    n_per_defect: int = 10,
    progress: Optional[Progress] = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write one MVTec-AD-layout category per texture under ``out``; return the category folders.

    ``texture="all"`` writes brick, grass and gravel. Same arguments, byte-identical files.
    Everything is built in temporary folders beside the destinations and renamed into place;
    ``overwrite`` replaces only a folder this function wrote (one with synth.json).
    """
    textures = _check_arguments(texture, size, n_train, n_test_good, n_per_defect)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgekitError(f"{out}: exists and is not a folder")
    destinations = [out / name for name in textures]
    for dest in destinations:
        if dest.exists() and not dest.is_dir():
            raise EdgekitError(f"{dest}: exists and is not a folder")
        if dest.is_dir() and any(dest.iterdir()) and not overwrite:
            raise EdgekitError(f"{dest}: already exists and is not empty (pass overwrite to replace it)")
        refuse_unowned(
            dest, owned=lambda d: (d / "synth.json").is_file(), what="synthetic dataset (a folder with synth.json)"
        )
    out.mkdir(parents=True, exist_ok=True)
    per_texture = n_train + n_test_good + len(DEFECT_KINDS) * n_per_defect
    counter = _Counter(progress, per_texture * len(textures))
    built: list[Path] = []
    try:
        for name in textures:
            tmp = make_staging(f".{name}.tmp-", out)
            built.append(tmp)
            _write_category(
                tmp,
                name,
                size=size,
                seed=seed,
                grayscale=grayscale,
                n_train=n_train,
                n_test_good=n_test_good,
                n_per_defect=n_per_defect,
                counter=counter,
            )
    except BaseException:
        for tmp in built:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    for tmp, dest in zip(built, destinations):
        _install(tmp, dest)
    return destinations


def apply_defect(
    image: np.ndarray, kind: str, rng: np.random.Generator, *, filler: Optional[np.ndarray] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(defective image, bool mask)`` for an HxW or HxWx3 uint8 image.

    The mask is exactly where the returned image differs from ``image``; the defect passes
    :func:`defect_visibility` limits. ``filler`` (same shape) is the unrelated patch a
    ``missing`` defect may paste in; without it the hole is flat.
    """
    if kind not in DEFECT_KINDS:
        raise EdgekitError(f"unknown defect kind {kind!r}; known: {', '.join(DEFECT_KINDS)}")
    shape = image.shape[:2]
    for _ in range(MAX_DRAWS):
        region = _draw_region(kind, rng, shape)
        changed = _change(kind, image, region, rng, filler)
        contrast, area = defect_visibility(image, changed, region)
        if contrast >= MIN_CONTRAST and AREA_FRACTION[0] <= area <= AREA_FRACTION[1]:
            return changed, region
    raise EdgekitError(f"could not draw a visible {kind} defect in {MAX_DRAWS} tries (image too flat?)")


def defect_visibility(original: np.ndarray, defective: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """``(mean |defective - original| over masked pixels and channels, mask share of the image)``."""
    area = float(mask.mean())
    if not mask.any():
        return 0.0, area
    difference = np.abs(defective.astype(np.int16) - original.astype(np.int16))
    return float(difference[mask].mean()), area


def train_crop_boxes(rng: np.random.Generator, count: int) -> list[Box]:
    """Random crop boxes in the photo that do not overlap ``TEST_REGION``."""
    boxes: list[Box] = []
    span = PHOTO_SIDE - CROP_SIDE
    while len(boxes) < count:
        x0, y0 = (int(v) for v in rng.integers(0, span + 1, size=2))
        box = (x0, y0, x0 + CROP_SIDE, y0 + CROP_SIDE)
        if not boxes_overlap(box, TEST_REGION):
            boxes.append(box)
    return boxes


def test_crop_boxes(rng: np.random.Generator, count: int) -> list[Box]:
    """Random crop boxes inside ``TEST_REGION``."""
    rx0, ry0, rx1, ry1 = TEST_REGION
    xs = rng.integers(rx0, rx1 - CROP_SIDE + 1, size=count)
    ys = rng.integers(ry0, ry1 - CROP_SIDE + 1, size=count)
    return [(int(x), int(y), int(x) + CROP_SIDE, int(y) + CROP_SIDE) for x, y in zip(xs, ys)]


def boxes_overlap(a: Box, b: Box) -> bool:
    """True when two end-exclusive boxes share at least one pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class _Counter:
    def __init__(self, progress: Optional[Progress], total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def _check_arguments(texture: str, size: int, n_train: int, n_test_good: int, n_per_defect: int) -> tuple[str, ...]:
    if texture == "all":
        textures = TEXTURES
    elif texture in TEXTURES:
        textures = (texture,)
    else:
        raise EdgekitError(f"unknown texture {texture!r}; known: {', '.join(TEXTURES)}, all")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise EdgekitError(f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, not {size}")
    if n_train < 1 or n_test_good < 1 or n_per_defect < 0:
        raise EdgekitError("need at least 1 train image, 1 good test image and 0 or more defects per kind")
    return textures


def _load_photo(texture: str) -> np.ndarray:
    try:
        import skimage.data
    except ImportError:
        raise EdgekitError("the default data needs scikit-image: pip install 'edgekit-anomaly[train]'") from None

    photo = np.asarray(getattr(skimage.data, texture)(), dtype=np.uint8)
    if photo.shape != (PHOTO_SIDE, PHOTO_SIDE):
        raise EdgekitError(f"skimage.data.{texture}() is {photo.shape}, expected {PHOTO_SIDE}x{PHOTO_SIDE}")
    return photo


def _colour_gains(texture: str) -> np.ndarray:
    gains = np.asarray(TINTS[texture], dtype=np.float64)
    return gains / float(gains @ _LUMA)


def _render(
    photo: np.ndarray, box: Box, flips: tuple[bool, bool], size: int, gains: Optional[np.ndarray]
) -> np.ndarray:
    """Crop ``box`` from the photo, resize to ``size`` (bicubic), flip, and tint (None: grey)."""
    crop = Image.fromarray(photo).crop(box).resize((size, size), Image.Resampling.BICUBIC)
    grey = np.asarray(crop)
    if flips[0]:
        grey = grey[:, ::-1]
    if flips[1]:
        grey = grey[::-1, :]
    if gains is None:
        return np.ascontiguousarray(grey)
    rgb = np.rint(grey[:, :, None].astype(np.float64) * gains)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _write_category(
    folder: Path,
    texture: str,
    *,
    size: int,
    seed: int,
    grayscale: bool,
    n_train: int,
    n_test_good: int,
    n_per_defect: int,
    counter: _Counter,
) -> None:
    photo = _load_photo(texture)
    gains = None if grayscale else _colour_gains(texture)
    filler_name = FILLER_TEXTURE[texture]
    filler_photo = _load_photo(filler_name)
    filler_gains = None if grayscale else _colour_gains(filler_name)
    streams = np.random.SeedSequence([seed, zlib.crc32(texture.encode())]).spawn(2 + len(DEFECT_KINDS))
    records: list[dict] = []

    def crops(rng: np.random.Generator, boxes: list[Box], subdir: str):
        flips = rng.integers(0, 2, size=(len(boxes), 2)).astype(bool)
        for index, (box, flip) in enumerate(zip(boxes, flips)):
            stem = f"{index:03d}"
            flip_lr, flip_ud = bool(flip[0]), bool(flip[1])
            record = {"image": f"{subdir}/{stem}.png", "box": list(box), "flip": [flip_lr, flip_ud]}
            yield stem, _render(photo, box, (flip_lr, flip_ud), size, gains), record

    train_rng = np.random.default_rng(streams[0])
    for stem, image, record in crops(train_rng, train_crop_boxes(train_rng, n_train), "train/good"):
        _save_png(folder / record["image"], image)
        records.append(record)
        counter.step()
    good_rng = np.random.default_rng(streams[1])
    for stem, image, record in crops(good_rng, test_crop_boxes(good_rng, n_test_good), "test/good"):
        _save_png(folder / record["image"], image)
        records.append(record)
        counter.step()
    for kind, stream in zip(DEFECT_KINDS, streams[2:]):
        if n_per_defect == 0:
            continue
        rng = np.random.default_rng(stream)
        for stem, image, record in crops(rng, test_crop_boxes(rng, n_per_defect), f"test/{kind}"):
            filler_box = test_crop_boxes(rng, 1)[0]
            filler = _render(filler_photo, filler_box, (False, False), size, filler_gains)
            defective, mask = apply_defect(image, kind, rng, filler=filler)
            contrast, area = defect_visibility(image, defective, mask)
            record.update(
                mask=f"ground_truth/{kind}/{stem}_mask.png",
                defect=kind,
                contrast=round(contrast, 2),
                area_fraction=round(area, 5),
            )
            _save_png(folder / record["image"], defective)
            _save_png(folder / record["mask"], mask.astype(np.uint8) * 255)
            records.append(record)
            counter.step()
    manifest = {
        "generator": "edgekit.data.synth",
        "schema": 1,
        "texture": texture,
        "size": size,
        "seed": seed,
        "grayscale": grayscale,
        "photo": f"skimage.data.{texture}() 512x512 grey, CC0",
        "crop_side": CROP_SIDE,
        "test_region": list(TEST_REGION),
        "colour_gains": None if gains is None else [round(float(g), 6) for g in gains],
        "min_contrast": MIN_CONTRAST,
        "area_fraction": list(AREA_FRACTION),
        "images": records,
    }
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    (folder / "synth.json").write_text(text, encoding="utf-8")


def _save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=6, optimize=False)


def _install(tmp: Path, dest: Path) -> None:
    old: Optional[Path] = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        old.rmdir()
        dest.rename(old)
    tmp.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _draw_region(kind: str, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A hard-edged (no anti-aliasing) bool region for one defect of ``kind`` on a (height, width)
    image; sizes scale with its shorter side."""
    height, width = shape
    size = min(height, width)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    extent = np.array([width, height], dtype=np.float64)
    centre = rng.uniform(0.2, 0.8, size=2) * extent
    if kind == "scratch":
        line_width = int(rng.integers(2, max(2, size // 64) + 2))
        for _ in range(int(rng.integers(1, 3))):
            draw.line(_curve(rng, size, extent), fill=255, width=line_width, joint="curve")
    else:
        share = {"stain": (0.01, 0.045), "missing": (0.012, 0.05), "discolor": (0.025, 0.075)}[kind]
        radius = np.sqrt(rng.uniform(*share) * height * width / np.pi)
        if kind == "stain":
            outline = _blob(rng, centre, radius, vertices=32, wobble=0.25)
        elif kind == "missing":
            outline = _blob(rng, centre, radius, vertices=int(rng.integers(5, 9)), wobble=0.2)
        else:
            outline = _ellipse(rng, centre, radius)
        draw.polygon(outline, fill=255)
    return np.asarray(canvas) > 0


def _curve(rng: np.random.Generator, size: int, extent: np.ndarray) -> list[tuple[float, float]]:
    """Points on a quadratic Bezier: a scratch 35-75 % of the image long, gently bent."""
    length = rng.uniform(0.35, 0.75) * size
    angle = rng.uniform(0, np.pi)
    middle = rng.uniform(0.3, 0.7, size=2) * extent
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    start, end = middle - direction * length / 2, middle + direction * length / 2
    control = middle + normal * rng.uniform(-0.3, 0.3) * length
    t = np.linspace(0.0, 1.0, 40)[:, None]
    points = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    return [(float(x), float(y)) for x, y in points]


def _blob(rng: np.random.Generator, centre: np.ndarray, radius: float, *, vertices: int, wobble: float):
    if vertices < 12:  # few corners: an irregular chip
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=vertices))
    else:  # many corners: a smooth wobbly outline
        angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    amplitudes = rng.uniform(0, wobble, size=3)
    scale = 1 + sum(a * np.sin(k * angles + p) for k, a, p in zip((2, 3, 5), amplitudes, phases))
    scale = scale * rng.uniform(0.85, 1.15, size=vertices)
    xs = centre[0] + radius * scale * np.cos(angles)
    ys = centre[1] + radius * scale * np.sin(angles)
    return [(float(x), float(y)) for x, y in zip(xs, ys)]


def _ellipse(rng: np.random.Generator, centre: np.ndarray, radius: float):
    ratio = rng.uniform(1.0, 2.2)
    tilt = rng.uniform(0, np.pi)
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    a, b = radius * np.sqrt(ratio), radius / np.sqrt(ratio)
    xs = a * np.cos(angles) * np.cos(tilt) - b * np.sin(angles) * np.sin(tilt)
    ys = a * np.cos(angles) * np.sin(tilt) + b * np.sin(angles) * np.cos(tilt)
    return [(float(centre[0] + x), float(centre[1] + y)) for x, y in zip(xs, ys)]


def _change(
    kind: str, image: np.ndarray, region: np.ndarray, rng: np.random.Generator, filler: Optional[np.ndarray]
) -> np.ndarray:
    """Apply the defect's pixel change inside ``region``; every region pixel ends up different."""
    original = image.astype(np.float64)
    colour = image.ndim == 3
    if kind == "scratch":
        if rng.random() < 0.5:
            target = 255 - (255 - original) * rng.uniform(0.1, 0.3)
        else:
            target = original * rng.uniform(0.15, 0.35)
    elif kind == "stain":
        if rng.random() < 0.7:
            factors = rng.uniform(0.4, 0.6) * np.array([1.0, 0.88, 0.72])
            target = original * (factors if colour else factors[0])
        else:
            target = original + (255 - original) * rng.uniform(0.35, 0.6)
    elif kind == "missing":
        use_patch = filler is not None and rng.random() < 0.5
        hole = rng.uniform(8, 40)
        target = filler.astype(np.float64) if use_patch else np.full_like(original, hole)
    else:
        direction = _DISCOLOR_DIRECTIONS[int(rng.integers(len(_DISCOLOR_DIRECTIONS)))]
        magnitude = rng.uniform(30, 50)
        shift = magnitude * direction / np.abs(direction).mean()
        target = original + (shift if colour else np.sign(direction.sum()) * magnitude)
    result = np.where(region[..., None] if colour else region, target, original)
    result = np.clip(np.rint(result), 0, 255).astype(np.uint8)
    same = (result == image).all(axis=-1) if colour else result == image
    untouched = region & same
    if untouched.any():
        signed = image.astype(np.int16)
        nudged = np.where(image < 128, signed + 8, signed - 8).astype(np.uint8)
        result[untouched] = nudged[untouched]
    return result
