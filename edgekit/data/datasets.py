"""Dataset readers: MVTec AD category folders, the VisA release, and plain folder pairs.

Each reader returns a :class:`Dataset`: sorted, deterministic lists of samples (paths, labels,
defect names, mask paths). Nothing is decoded until :meth:`Dataset.read_mask` or the
pre-processing reads an image, so opening a dataset is cheap. Malformed trees raise
:class:`EdgekitError` with one line naming the path at fault.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from edgekit.errors import EdgekitError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VISA_SPLIT_CSV = Path("split_csv") / "1cls.csv"
VISA_HEADER = ("object", "split", "label", "image", "mask")
PathLike = Union[str, Path]


@dataclass(frozen=True)
class Sample:
    """One image: its path, 0 normal / 1 anomalous, defect name ("good" for normals), mask path."""

    path: Path
    label: int
    defect: str
    mask_path: Optional[Path]


@dataclass(frozen=True)
class Dataset:
    """A train split of normal images and a test split of normal and anomalous ones."""

    name: str
    root: Path
    layout: str  # "mvtec" | "visa" | "folder"
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]

    def read_mask(self, sample: Sample, height: int, width: int) -> np.ndarray:
        """The sample's ground truth as a bool HxW array, resized nearest-neighbour.

        All False for normals and anomalies without a mask. Any non-zero pixel counts as
        anomalous for label masks (max value below 128, e.g. VisA's 0/1/2...); masks with larger
        values (0/255, possibly JPEG-noisy) are thresholded at 128.
        """
        if sample.mask_path is None:
            return np.zeros((height, width), dtype=bool)
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(sample.mask_path) as img:
                img.load()
                values = np.asarray(img if img.mode in ("1", "L", "P", "I", "I;16") else img.convert("L"))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            reason = exc.__class__.__name__
            raise EdgekitError(f"{sample.mask_path}: not a readable mask ({reason})") from None
        if values.ndim != 2:
            raise EdgekitError(f"{sample.mask_path}: a mask must be a single-channel image")
        threshold = 128 if values.max(initial=0) >= 128 else 1
        binary = (values >= threshold).astype(np.uint8) * 255
        if binary.shape != (height, width):
            binary = np.asarray(Image.fromarray(binary).resize((width, height), Image.Resampling.NEAREST))
        return binary > 0


def open_dataset(path: PathLike, *, category: Optional[str] = None) -> Dataset:
    """Open an MVTec category folder, an MVTec root (with ``category``) or a VisA root.

    A folder with ``train/`` and ``test/`` is an MVTec category; a folder with
    ``split_csv/1cls.csv`` is VisA; a folder whose sub-folders are MVTec categories needs
    ``category`` unless it holds exactly one.
    """
    root = _existing_folder(path)
    if (root / VISA_SPLIT_CSV).is_file():
        return read_visa(root, category=category)
    if _is_mvtec_category(root):
        if category is not None and category != root.name:
            raise EdgekitError(f"{root}: is already the MVTec category {root.name!r}, not {category!r}")
        return read_mvtec(root)
    categories = sorted(child.name for child in root.iterdir() if _is_mvtec_category(child))
    if category is not None:
        if category not in categories:
            known = ", ".join(categories) or "none"
            raise EdgekitError(f"{root}: no MVTec category {category!r} (found: {known})")
        return read_mvtec(root / category)
    if len(categories) == 1:
        return read_mvtec(root / categories[0])
    if categories:
        raise EdgekitError(
            f"{root}: holds several MVTec categories ({', '.join(categories)}); "
            f"pass one of them, e.g. {root / categories[0]}, or category="
        )
    raise EdgekitError(
        f"{root}: not a dataset (expected an MVTec category with train/ and test/, "
        f"an MVTec root of categories, or a VisA root with {VISA_SPLIT_CSV.as_posix()})"
    )


def read_mvtec(category_dir: PathLike) -> Dataset:
    """Read one MVTec AD category: train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png."""
    root = _existing_folder(category_dir)
    train_good = root / "train" / "good"
    train_images = _images_in(train_good)
    if not train_images:
        raise EdgekitError(f"{train_good}: no training images (expected MVTec layout train/good/*.png)")
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise EdgekitError(f"{test_dir}: missing (expected MVTec layout test/<defect>/)")
    test: list[Sample] = []
    for defect_dir in sorted(child for child in test_dir.iterdir() if child.is_dir() and not _hidden(child)):
        images = _images_in(defect_dir)
        if not images:
            raise EdgekitError(f"{defect_dir}: no test images")
        defect = defect_dir.name
        for image in images:
            if defect == "good":
                test.append(Sample(image, 0, "good", None))
            else:
                test.append(Sample(image, 1, defect, _mvtec_mask(root / "ground_truth" / defect, image)))
    if not test:
        raise EdgekitError(f"{test_dir}: no test images")
    train = tuple(Sample(image, 0, "good", None) for image in train_images)
    return Dataset(root.name, root, "mvtec", train, tuple(test))


def read_visa(root: PathLike, category: Optional[str] = None, split_csv: Optional[PathLike] = None) -> Dataset:
    """Read one VisA category through its split file (default ``<root>/split_csv/1cls.csv``).

    The CSV header is ``object,split,label,image,mask``; labels are ``normal``/``anomaly`` and
    paths are relative to ``root``. VisA's split names no defect type, so anomalies are ``anomaly``.
    """
    root = _existing_folder(root)
    split_path = Path(split_csv) if split_csv is not None else root / VISA_SPLIT_CSV
    if not split_path.is_file():
        raise EdgekitError(f"{split_path}: VisA split file not found")
    rows = _read_split_rows(split_path)
    categories = sorted({row["object"] for _, row in rows})
    if not categories:
        raise EdgekitError(f"{split_path}: no rows")
    if category is None:
        if len(categories) > 1:
            listed = ", ".join(categories)
            raise EdgekitError(f"{root}: VisA root with several categories ({listed}); pass category=")
        category = categories[0]
    if category not in categories:
        raise EdgekitError(f"{split_path}: no category {category!r} (found: {', '.join(categories)})")
    train: list[Sample] = []
    test: list[Sample] = []
    for line, row in rows:
        if row["object"] != category:
            continue
        where = f"{split_path}:{line}"
        if row["split"] not in ("train", "test"):
            raise EdgekitError(f"{where}: split must be train or test, not {row['split']!r}")
        if row["label"] not in ("normal", "anomaly"):
            raise EdgekitError(f"{where}: label must be normal or anomaly, not {row['label']!r}")
        image = _visa_file(root, row["image"], where, "image")
        if row["label"] == "normal":
            sample = Sample(image, 0, "good", None)
        else:
            if row["split"] == "train":
                raise EdgekitError(f"{where}: anomalous image in the train split ({row['image']})")
            sample = Sample(image, 1, "anomaly", _visa_file(root, row["mask"], where, "mask"))
        (train if row["split"] == "train" else test).append(sample)
    if not train:
        raise EdgekitError(f"{split_path}: no train images for category {category!r}")
    if not test:
        raise EdgekitError(f"{split_path}: no test images for category {category!r}")
    train.sort(key=lambda sample: sample.path)
    test.sort(key=lambda sample: sample.path)
    return Dataset(category, root, "visa", tuple(train), tuple(test))


def read_folder(
    normal_dir: PathLike,
    abnormal_dir: Optional[PathLike] = None,
    mask_dir: Optional[PathLike] = None,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Read a folder of normal images and, optionally, a folder of anomalous ones.

    With ``abnormal_dir``, a seeded ``test_fraction`` of the normals moves to the test split
    (at least one, never all). Masks in ``mask_dir`` are matched by stem (``<stem>.png`` or
    ``<stem>_mask.png``); an anomaly without one has ``mask_path`` None.
    """
    normal_root = _existing_folder(normal_dir)
    normals = _images_in(normal_root)
    if not normals:
        raise EdgekitError(f"{normal_root}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    if abnormal_dir is None:
        if mask_dir is not None:
            raise EdgekitError(f"{mask_dir}: masks given without an abnormal folder")
        train = tuple(Sample(image, 0, "good", None) for image in normals)
        return Dataset(normal_root.name, normal_root, "folder", train, ())
    if not 0.0 <= test_fraction < 1.0:
        raise EdgekitError(f"test_fraction must be in [0, 1), not {test_fraction}")
    abnormal_root = _existing_folder(abnormal_dir)
    anomalies = _images_in(abnormal_root)
    if not anomalies:
        raise EdgekitError(f"{abnormal_root}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    mask_root = _existing_folder(mask_dir) if mask_dir is not None else None
    n_test = min(max(round(test_fraction * len(normals)), 1), len(normals) - 1)
    order = np.random.default_rng(seed).permutation(len(normals))
    test_indices = set(int(i) for i in order[:n_test])
    defect = abnormal_root.name if abnormal_root.name != "good" else "anomaly"
    train = tuple(Sample(image, 0, "good", None) for i, image in enumerate(normals) if i not in test_indices)
    test = [Sample(image, 0, "good", None) for i, image in enumerate(normals) if i in test_indices]
    test += [Sample(image, 1, defect, _folder_mask(mask_root, image)) for image in anomalies]
    shared = normal_root.parent == abnormal_root.parent
    root = normal_root.parent if shared else normal_root
    return Dataset(root.name, root, "folder", train, tuple(test))


def _existing_folder(path: Optional[PathLike]) -> Path:
    folder = Path(path)  # type: ignore[arg-type]
    if not folder.exists():
        raise EdgekitError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise EdgekitError(f"{folder}: not a folder")
    return folder


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        child
        for child in folder.iterdir()
        if child.is_file() and not _hidden(child) and child.suffix.lower() in IMAGE_EXTENSIONS
    )


def _is_mvtec_category(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def _mvtec_mask(ground_truth: Path, image: Path) -> Path:
    expected = ground_truth / f"{image.stem}_mask.png"
    if expected.is_file():
        return expected
    for candidate in _images_in(ground_truth):
        if candidate.stem in (f"{image.stem}_mask", image.stem):
            return candidate
    raise EdgekitError(f"{expected}: missing ground-truth mask for {image}")


def _folder_mask(mask_root: Optional[Path], image: Path) -> Optional[Path]:
    if mask_root is None:
        return None
    for name in (f"{image.stem}.png", f"{image.stem}_mask.png"):
        if (mask_root / name).is_file():
            return mask_root / name
    return None


def _read_split_rows(split_path: Path) -> list[tuple[int, dict[str, str]]]:
    try:
        with split_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = tuple(field.strip().lower() for field in next(reader, []))
            if header != VISA_HEADER:
                found = ",".join(header) or "empty"
                raise EdgekitError(f"{split_path}: header must be {','.join(VISA_HEADER)}, not {found}")
            rows = []
            for line, fields in enumerate(reader, start=2):
                if not any(field.strip() for field in fields):
                    continue
                if len(fields) != len(VISA_HEADER):
                    expected, found = len(VISA_HEADER), len(fields)
                    raise EdgekitError(f"{split_path}:{line}: expected {expected} fields, found {found}")
                rows.append((line, {key: value.strip() for key, value in zip(VISA_HEADER, fields)}))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise EdgekitError(f"{split_path}: not a readable CSV ({exc.__class__.__name__})") from None
    return rows


def _visa_file(root: Path, relative: str, where: str, what: str) -> Path:
    if not relative:
        raise EdgekitError(f"{where}: empty {what} path")
    path = root / relative
    if not path.is_file():
        raise EdgekitError(f"{where}: {what} file not found: {path}")
    return path
