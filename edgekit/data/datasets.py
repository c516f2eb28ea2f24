"""Dataset readers: MVTec AD category folders, the VisA release, classification folders, lists of
images (CSV or JSON) and plain folder pairs.

Each reader returns a :class:`Dataset`: sorted, deterministic lists of samples (paths, labels,
defect names, mask paths). Masks are optional everywhere: most factories label whole images, so
an anomaly without a mask counts for image metrics and is left out of pixel metrics. Nothing is
decoded until :meth:`Dataset.read_mask` or the pre-processing reads an image, so opening a
dataset is cheap. Malformed trees raise :class:`EdgekitError` with one line naming the path.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from edgekit.errors import EdgekitError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VISA_SPLIT_CSV = Path("split_csv") / "1cls.csv"
VISA_HEADER = ("object", "split", "label", "image", "mask")
#: Folder names and list labels that mean "normal" (anything else in a list is a defect name).
NORMAL_NAMES = ("good", "ok", "normal", "0")
#: List labels that mean "anomalous" without naming the defect.
ANOMALY_NAMES = ("anomaly", "abnormal", "defect", "nok", "bad", "1")
LIST_SUFFIXES = (".csv", ".json")
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
    layout: str  # "mvtec" | "visa" | "classes" | "list" | "folder"
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]

    @property
    def pixel_indices(self) -> list[int]:
        """Test samples that pixel metrics may use: the normals and the anomalies with a mask, or
        none at all when no anomaly has one (an anomaly without a mask is not all-normal pixels)."""
        if not any(s.label == 1 and s.mask_path is not None for s in self.test):
            return []
        return [i for i, s in enumerate(self.test) if s.label == 0 or s.mask_path is not None]

    @property
    def masks_note(self) -> str:
        """How many test anomalies have masks, in words: reports say it next to pixel metrics."""
        anomalies = [s for s in self.test if s.label == 1]
        masked = sum(s.mask_path is not None for s in anomalies)
        if not masked:
            return "no masks"
        if masked == len(anomalies):
            return f"masks for all {masked} anomalies"
        return f"masks for {masked} of {len(anomalies)} anomalies"

    def read_mask(self, sample: Sample, height: int, width: int, *, spec: Optional[Any] = None) -> np.ndarray:
        """The sample's ground truth as a bool HxW array, resized nearest-neighbour (through the
        region of interest, fit and tiles of ``spec``, an InputSpec, when given: as its image was;
        then HxW is ``spec.map_size``).

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
        if spec is not None:
            from dataclasses import replace

            from edgekit.preprocess import fit_to

            geometry = replace(spec, channels=1, mean=(0.0,), std=(1.0,), resize="pil-nearest")
            return fit_to(binary[:, :, None], geometry)[:, :, 0] > 0
        if binary.shape != (height, width):
            binary = np.asarray(Image.fromarray(binary).resize((width, height), Image.Resampling.NEAREST))
        return binary > 0


def open_dataset(path: PathLike, *, category: Optional[str] = None, seed: int = 0) -> Dataset:
    """Open any layout edgekit reads, told apart by what ``path`` holds.

    A ``.csv``/``.json`` file is a list of images (:func:`read_list`); a folder with
    ``split_csv/1cls.csv`` is VisA; a folder with ``train/`` and ``test/`` is an MVTec category; a
    folder whose sub-folders are MVTec categories needs ``category`` unless it holds exactly one;
    a folder with a ``good``/``ok``/``normal`` sub-folder of images is a classification layout
    (:func:`read_classes`). ``seed`` splits the normals of layouts that have no split of their own.
    """
    given = Path(path)
    if given.is_file() and given.suffix.lower() in LIST_SUFFIXES:
        return read_list(given, seed=seed)
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
    if any(_images_in(root / name) for name in NORMAL_NAMES):
        return read_classes(root, seed=seed)
    raise EdgekitError(
        f"{root}: not a dataset (expected an MVTec category with train/ and test/, an MVTec root of "
        f"categories, a VisA root with {VISA_SPLIT_CSV.as_posix()}, a folder with good/ (or ok/) and "
        f"defect folders, or a .csv/.json list of images)"
    )


def read_mvtec(category_dir: PathLike) -> Dataset:
    """Read one MVTec AD category: train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png.

    ``ground_truth/`` may be missing or partial: an anomaly without its mask is image-labelled."""
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
    rows = _csv_rows(split_path, _visa_header_problem)
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
    for where, row in rows:
        if row["object"] != category:
            continue
        if row["split"] not in ("train", "test"):
            raise EdgekitError(f"{where}: split must be train or test, not {row['split']!r}")
        if row["label"] not in ("normal", "anomaly"):
            raise EdgekitError(f"{where}: label must be normal or anomaly, not {row['label']!r}")
        image = _listed_file(root, row["image"], where, "image")
        if row["label"] == "normal":
            sample = Sample(image, 0, "good", None)
        else:
            if row["split"] == "train":
                raise EdgekitError(f"{where}: anomalous image in the train split ({row['image']})")
            sample = Sample(image, 1, "anomaly", _listed_file(root, row["mask"], where, "mask"))
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
    abnormal_root = _existing_folder(abnormal_dir)
    anomalies = _images_in(abnormal_root)
    if not anomalies:
        raise EdgekitError(f"{abnormal_root}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    mask_root = _existing_folder(mask_dir) if mask_dir is not None else None
    defect = abnormal_root.name if abnormal_root.name != "good" else "anomaly"
    train, test = _split_normals(normals, test_fraction, seed)
    test += [Sample(image, 1, defect, _folder_mask(mask_root, image)) for image in anomalies]
    shared = normal_root.parent == abnormal_root.parent
    root = normal_root.parent if shared else normal_root
    return Dataset(root.name, root, "folder", train, tuple(test))


def read_classes(root: PathLike, *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Read a classification layout: ``good/`` (or ``ok/``, ``normal/``) and one folder per defect
    (``nok/``, ``scratch/``, ...), image labels only. A seeded ``test_fraction`` of the normals
    joins the anomalies in the test split, as :func:`read_folder` does."""
    folder = _existing_folder(root)
    normal_dirs = [folder / name for name in NORMAL_NAMES if _images_in(folder / name)]
    if len(normal_dirs) != 1:
        found = ", ".join(d.name for d in normal_dirs) or "none"
        raise EdgekitError(
            f"{folder}: needs exactly one folder of normal images named good, ok or normal (found: {found})"
        )
    defects = sorted(
        child
        for child in folder.iterdir()
        if child.is_dir() and not _hidden(child) and child != normal_dirs[0] and _images_in(child)
    )
    normals = _images_in(normal_dirs[0])
    if not defects:
        return Dataset(folder.name, folder, "classes", tuple(Sample(i, 0, "good", None) for i in normals), ())
    train, test = _split_normals(normals, test_fraction, seed)
    for defect_dir in defects:
        defect = "anomaly" if defect_dir.name.lower() in ANOMALY_NAMES else defect_dir.name
        test += [Sample(image, 1, defect, None) for image in _images_in(defect_dir)]
    return Dataset(folder.name, folder, "classes", train, tuple(test))


def read_list(path: PathLike, *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Read a list of images: CSV with a header ``path,label`` (optional ``mask``, ``split``), or
    JSON, a list of objects with those keys. Paths are relative to the list's folder.

    A label in ``NORMAL_NAMES`` is normal; ``ANOMALY_NAMES`` or any other word is an anomaly (the
    word is its defect name). Without a ``split``, a seeded ``test_fraction`` of the normals joins
    the anomalies in the test split; anomalies are never in the train split.
    """
    file = Path(path)
    if not file.is_file():
        raise EdgekitError(f"{file}: no such list file")
    rows = _json_rows(file) if file.suffix.lower() == ".json" else _csv_rows(file, _list_header_problem)
    normals: list[tuple[Path, str]] = []
    anomalies: list[Sample] = []
    for where, row in rows:
        image = _listed_file(file.parent, row.get("path", ""), where, "image")
        label = str(row.get("label", "")).strip()
        split = str(row.get("split") or "").strip().lower()
        if not label:
            raise EdgekitError(f"{where}: empty label")
        if split not in ("", "train", "test"):
            raise EdgekitError(f"{where}: split must be train or test, not {split!r}")
        if label.lower() in NORMAL_NAMES:
            normals.append((image, split))
            continue
        if split == "train":
            raise EdgekitError(f"{where}: anomalous image in the train split ({image})")
        mask = _listed_file(file.parent, row["mask"], where, "mask") if row.get("mask") else None
        anomalies.append(Sample(image, 1, "anomaly" if label.lower() in ANOMALY_NAMES else label, mask))
    if not normals:
        raise EdgekitError(f"{file}: no normal images (labels {', '.join(NORMAL_NAMES)})")
    if any(split for _, split in normals):
        train = tuple(sorted((Sample(i, 0, "good", None) for i, split in normals if split != "test"), key=_by_path))
        test = [Sample(i, 0, "good", None) for i, split in normals if split == "test"]
        if not train:
            raise EdgekitError(f"{file}: no normal images in the train split")
    elif anomalies:
        train, test = _split_normals(sorted(i for i, _ in normals), test_fraction, seed)
    else:
        train, test = tuple(Sample(i, 0, "good", None) for i, _ in sorted(normals)), []
    return Dataset(file.stem, file.parent, "list", train, tuple(sorted(test + anomalies, key=_by_path)))


def _by_path(sample: Sample) -> Path:
    return sample.path


def _split_normals(normals: list[Path], test_fraction: float, seed: int) -> tuple[tuple[Sample, ...], list[Sample]]:
    """A seeded ``test_fraction`` of the normals (at least one, never all) for the test split."""
    if not 0.0 <= test_fraction < 1.0:
        raise EdgekitError(f"test_fraction must be in [0, 1), not {test_fraction}")
    if len(normals) < 2:
        raise EdgekitError(f"{normals[0].parent}: needs at least 2 normal images (one to train on, one to test)")
    n_test = min(max(round(test_fraction * len(normals)), 1), len(normals) - 1)
    order = np.random.default_rng(seed).permutation(len(normals))
    test_indices = set(int(i) for i in order[:n_test])
    train = tuple(Sample(image, 0, "good", None) for i, image in enumerate(normals) if i not in test_indices)
    return train, [Sample(image, 0, "good", None) for i, image in enumerate(normals) if i in test_indices]


def _csv_rows(
    file: Path, header_problem: Callable[[tuple[str, ...]], Optional[str]]
) -> list[tuple[str, dict[str, str]]]:
    """(``file:line``, {header field: value}) per non-blank row; ``header_problem`` says what is
    wrong with the (lower-cased) header, or None."""
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = tuple(field.strip().lower() for field in next(reader, []))
            problem = header_problem(header)
            if problem:
                raise EdgekitError(f"{file}: {problem}")
            rows = []
            for line, fields in enumerate(reader, start=2):
                if not any(field.strip() for field in fields):
                    continue
                if len(fields) != len(header):
                    raise EdgekitError(f"{file}:{line}: expected {len(header)} fields, found {len(fields)}")
                rows.append((f"{file}:{line}", {key: value.strip() for key, value in zip(header, fields)}))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise EdgekitError(f"{file}: not a readable CSV ({exc.__class__.__name__})") from None
    return rows


def _list_header_problem(header: tuple[str, ...]) -> Optional[str]:
    if "path" in header and "label" in header:
        return None
    return "header must name path and label (and optionally mask, split)"


def _visa_header_problem(header: tuple[str, ...]) -> Optional[str]:
    if header == VISA_HEADER:
        return None
    return f"header must be {','.join(VISA_HEADER)}, not {','.join(header) or 'empty'}"


def _json_rows(file: Path) -> list[tuple[str, dict[str, str]]]:
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgekitError(f"{file}: not readable JSON ({exc.__class__.__name__})") from None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise EdgekitError(f"{file}: must be a JSON list of objects with path and label")
    for index, entry in enumerate(entries):
        bad = [
            key for key in ("path", "label", "mask", "split") if key in entry and not isinstance(entry[key], (str, int))
        ]
        if bad or "path" not in entry or "label" not in entry:
            raise EdgekitError(f"{file}[{index}]: needs path and label as strings (mask, split optional)")
    return [(f"{file}[{index}]", entry) for index, entry in enumerate(entries)]


def _listed_file(folder: Path, relative: object, where: str, what: str) -> Path:
    text = str(relative).strip()
    if not text:
        raise EdgekitError(f"{where}: empty {what} path")
    path = folder / text
    if not path.is_file():
        raise EdgekitError(f"{where}: {what} file not found: {path}")
    return path


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


def _mvtec_mask(ground_truth: Path, image: Path) -> Optional[Path]:
    expected = ground_truth / f"{image.stem}_mask.png"
    if expected.is_file():
        return expected
    for candidate in _images_in(ground_truth):
        if candidate.stem in (f"{image.stem}_mask", image.stem):
            return candidate
    return None  # image-labelled: no ground_truth/ or no mask for this image


def _folder_mask(mask_root: Optional[Path], image: Path) -> Optional[Path]:
    if mask_root is None:
        return None
    for name in (f"{image.stem}.png", f"{image.stem}_mask.png"):
        if (mask_root / name).is_file():
            return mask_root / name
    return None
