"""High-resolution synthetic categories with small defects: the case tiling is for.

The same CC0 texture photos and defect kinds as :mod:`edgekit.data.synth`, rendered at a camera's
resolution (``size`` up to 4096) with seeded sensor noise, and each defect painted inside a window
of ``size / window`` pixels, so it covers 0.008-0.13 % of the image (a scratch 2-5 pixels wide): a
256-pixel resize of the whole image shrinks it below a pixel, a 256-pixel tile keeps it. Train and
test crops come from disjoint parts of the photo, as in ``synth``. MVTec AD layout, with masks.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np

from edgekit.data.synth import (
    DEFECT_KINDS,
    FILLER_TEXTURE,
    _colour_gains,
    _load_photo,
    _render,
    _save_png,
    apply_defect,
    test_crop_boxes,
    train_crop_boxes,
)
from edgekit.errors import EdgekitError
from edgekit.staging import make_staging

#: Image sides a high-resolution category may have.
MIN_SIZE, MAX_SIZE = 256, 4096


def write_high_res(
    dest: Path,
    *,
    texture: str = "brick",
    size: int = 1024,
    seed: int = 0,
    n_train: int = 20,
    n_test_good: int = 12,
    n_per_defect: int = 3,
    window: int = 8,
    noise: float = 3.0,
) -> Path:
    """Write one MVTec-layout category at ``dest`` (which must not exist) and return it.

    Defects are drawn inside a random ``size // window`` square; ``noise`` is the standard
    deviation (0-255 units) of the Gaussian sensor noise added to every image. Same arguments,
    same files; built in a staging folder and renamed into place.
    """
    if texture not in FILLER_TEXTURE:
        raise EdgekitError(f"unknown texture {texture!r}; known: {', '.join(FILLER_TEXTURE)}")
    if not MIN_SIZE <= size <= MAX_SIZE or size // window < 64:
        raise EdgekitError(
            f"size must be {MIN_SIZE}-{MAX_SIZE} with windows of at least 64 pixels, not {size}/{window}"
        )
    if n_train < 1 or n_test_good < 1 or n_per_defect < 1:
        raise EdgekitError("need at least one train image, one good test image and one defect per kind")
    dest = Path(dest)
    if dest.exists():
        raise EdgekitError(f"{dest}: already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_staging(f".{dest.name}.tmp-", dest.parent)
    try:
        _write(tmp, texture, size, seed, n_train, n_test_good, n_per_defect, window, noise)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _write(
    folder: Path,
    texture: str,
    size: int,
    seed: int,
    n_train: int,
    n_test_good: int,
    n_per_defect: int,
    window: int,
    noise: float,
) -> None:
    photo, gains = _load_photo(texture), _colour_gains(texture)
    filler_photo, filler_gains = _load_photo(FILLER_TEXTURE[texture]), _colour_gains(FILLER_TEXTURE[texture])
    rng = np.random.default_rng([seed, zlib.crc32(texture.encode()), size])
    side = size // window
    records = []

    def render(box, flips=None) -> np.ndarray:
        flips = tuple(bool(f) for f in rng.integers(0, 2, size=2)) if flips is None else flips
        clean = _render(photo, box, flips, size, gains).astype(np.float64)
        return np.clip(np.rint(clean + rng.normal(0.0, noise, clean.shape)), 0, 255).astype(np.uint8)

    for index, box in enumerate(train_crop_boxes(rng, n_train)):
        _save_png(folder / f"train/good/{index:03d}.png", render(box))
    for index, box in enumerate(test_crop_boxes(rng, n_test_good)):
        _save_png(folder / f"test/good/{index:03d}.png", render(box))
    for kind in DEFECT_KINDS:
        for index, box in enumerate(test_crop_boxes(rng, n_per_defect)):
            image = render(box)
            top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            part = image[top : top + side, left : left + side]
            filler = _render(filler_photo, test_crop_boxes(rng, 1)[0], (False, False), side, filler_gains)
            changed, region = apply_defect(part, kind, rng, filler=filler)
            image[top : top + side, left : left + side] = changed
            mask = np.zeros((size, size), np.uint8)
            mask[top : top + side, left : left + side] = region * 255
            _save_png(folder / f"test/{kind}/{index:03d}.png", image)
            _save_png(folder / f"ground_truth/{kind}/{index:03d}_mask.png", mask)
            records.append({"image": f"test/{kind}/{index:03d}.png", "share": round(float(region.sum()) / size**2, 6)})
    manifest = {"generator": "edgekit.data.high_res", "texture": texture, "size": size, "seed": seed}
    manifest.update(window=window, noise=noise, defects=records)
    (folder / "high_res.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
