"""A training run on disk: ``run.json`` (what was trained, on what) plus tensors and arrays.

Nothing in a run is pickled: network weights are safetensors, arrays are ``.npy`` read with
``allow_pickle=False``. A run is written into a temporary folder and renamed into place.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgekit.errors import EdgekitError

RUN_FILE = "run.json"
RUN_FORMAT = 1
#: run.json fields that say when, how fast and by which edgekit a run was made, not what it holds: the
#: fingerprint leaves them out (a changed training changes the saved bytes, whatever the version says).
VOLATILE_FIELDS = frozenset({"created", "train_seconds", "edgekit_version"})


@dataclass(frozen=True)
class Run:
    """A finished training run: its folder and its ``run.json`` contents."""

    path: Path
    config: Mapping[str, Any]

    @property
    def model(self) -> str:
        return str(self.config["model"])

    def input_spec(self):
        """The pre-processing the run trained with (its ``input`` block), as an InputSpec."""
        from edgekit.preprocess import InputSpec

        cfg = self.config["input"]
        return InputSpec(height=int(cfg["height"]), width=int(cfg["width"]), channels=int(cfg["channels"]),
                         mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), resize=cfg["resize"])

    def array(self, name: str) -> np.ndarray:
        target = self.path / f"{name}.npy"
        if not target.is_file():
            raise EdgekitError(f"run {self.path}: {target.name} is missing")
        return np.load(target, allow_pickle=False)

    def fingerprint(self) -> str:
        """sha256 of what the run holds, not when or where it was made: names the source of a bundle.

        Each file in name order, its name then its sha256; ``run.json`` counts as :meth:`settings`
        (no times, no edgekit version, the dataset folder as ``<dataset>``), every other file (weights,
        bank, arrays, metrics) as its bytes. Same seed and data, wherever the data lies: same fingerprint.
        """
        from edgekit.bundle import sha256_file

        digest = hashlib.sha256()
        for file in sorted(p for p in self.path.iterdir() if p.is_file()):
            digest.update(file.name.encode() + b"\0")
            if file.name == RUN_FILE:
                canonical = json.dumps(self.settings(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
                digest.update(hashlib.sha256(canonical.encode()).digest())
            else:
                digest.update(bytes.fromhex(sha256_file(file)))
        return digest.hexdigest()

    def settings(self) -> dict[str, Any]:
        """``run.json`` without :data:`VOLATILE_FIELDS`, the dataset's folder written as ``<dataset>``
        (in its own entry and at the head of every image path): the settings the fingerprint covers."""
        settings = {key: value for key, value in self.config.items() if key not in VOLATILE_FIELDS}
        dataset = self.config.get("dataset")
        root = dataset.get("path") if isinstance(dataset, Mapping) else None
        return _relocated(settings, str(root)) if root else settings


def _relocated(value: Any, root: str) -> Any:
    """``value`` with the dataset folder ``root`` written as ``<dataset>`` in every string."""
    if isinstance(value, str):
        return "<dataset>" if value == root else value.replace(root.rstrip("/") + "/", "<dataset>/")
    if isinstance(value, Mapping):
        return {key: _relocated(item, root) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relocated(item, root) for item in value]
    return value


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def open_run(path: str | Path) -> Run:
    """Read a run folder, refusing one that is missing or not a run."""
    path = Path(path)
    config_path = path / RUN_FILE
    if not path.is_dir():
        raise EdgekitError(f"{path}: no such run folder")
    if not config_path.is_file():
        raise EdgekitError(f"{path}: not a training run (no {RUN_FILE}); make one with `edgekit train`")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise EdgekitError(f"{config_path}: unreadable ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != RUN_FORMAT or "model" not in config:
        raise EdgekitError(f"{config_path}: not a run of this edgekit version (format {config.get('format')!r})")
    return Run(path=path, config=config)


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` is a training run (a folder with run.json): what ``--overwrite`` may replace."""
    return path.is_dir() and not path.is_symlink() and (path / RUN_FILE).is_file()


def refuse_unowned_run_dest(dest: Path, *, protect: Sequence[Path] = ()) -> None:
    """Refuse to replace ``dest`` unless it is a run folder (or empty), not the data nor the current folder."""
    from edgekit.staging import refuse_unowned

    refuse_unowned(dest, owned=is_run_folder, what=f"training run (a folder with {RUN_FILE})", protect=protect)


class RunWriter:
    """Collects a run's files in a staging folder beside ``dest``; ``commit`` renames it in.

    With ``overwrite``, only a run folder (or an empty folder) is replaced. Staging left by a
    killed process is swept when the next run for the same ``dest`` starts.
    """

    def __init__(self, dest: Path, *, overwrite: bool = False) -> None:
        from edgekit.clock import created_time
        from edgekit.staging import make_staging

        created_time()  # a bad SOURCE_DATE_EPOCH is refused before the training's minutes, not after
        self.dest = Path(dest)
        if self.dest.exists() and not overwrite and (not self.dest.is_dir() or any(self.dest.iterdir())):
            raise EdgekitError(f"{self.dest} already exists; choose another --out or pass --overwrite")
        refuse_unowned_run_dest(self.dest)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self._prefix = f".{self.dest.name}.run-"
        self.tmp = make_staging(self._prefix, self.dest.parent)

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def save_array(self, name: str, array: np.ndarray) -> None:
        np.save(self.tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)

    def save_json(self, name: str, data: Mapping[str, Any]) -> None:
        (self.tmp / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    def save_network(self, name: str, network: Any) -> None:
        """A torch module's weights as safetensors (never pickled)."""
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(self.file(name)))
        os.chmod(self.file(name), 0o666 & ~_umask())  # safetensors writes 0600; a run's files are ordinary files

    def file(self, name: str) -> Path:
        return self.tmp / name

    def commit(self, config: Mapping[str, Any]) -> Run:
        self.save_json(RUN_FILE, {**config, "format": RUN_FORMAT})
        old = None
        if self.dest.exists():
            from edgekit.staging import owner_tag

            old = self.dest.with_name(f"{self._prefix}{owner_tag()}old")
            os.replace(self.dest, old)
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a run is an ordinary folder
        os.replace(self.tmp, self.dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return open_run(self.dest)


def provenance(dataset: Any, trained: Sequence[Any], held_out: Sequence[Any], train_seconds: float) -> dict[str, Any]:
    """The run.json fields every trainer writes: the data, the images trained on (the export
    calibrates int8 on them), the held-out normals (thresholds are fitted on them), and when."""
    from edgekit import __version__
    from edgekit.clock import created_time

    return {"dataset": {"path": str(dataset.root.resolve()), "layout": dataset.layout, "name": dataset.name},
            "bank_images": [str(Path(p).resolve()) for p in trained],
            "holdout_images": [str(Path(p).resolve()) for p in held_out],
            "edgekit_version": __version__, "created": created_time(),
            "train_seconds": round(train_seconds, 2)}


def metrics_on_test_split(dataset: Any, scores: np.ndarray, maps: np.ndarray, size: int,
                          path: str) -> dict[str, Any]:
    """Image and pixel AUROC of training-path ``scores`` / ``maps`` on the dataset's test split
    (in its order); AUROCs only where both labels, and masks, exist. ``path`` says what scored."""
    from edgekit.metrics import image_auroc, pixel_auroc

    labels = np.array([s.label for s in dataset.test])
    result: dict[str, Any] = {"test_images": len(labels), "path": path}
    if 0 < labels.sum() < len(labels):
        result["image_auroc"] = image_auroc(labels, scores)
        masks = np.stack([dataset.read_mask(s, size, size) for s in dataset.test])
        if masks.any():
            result["pixel_auroc"] = pixel_auroc(masks, maps)
    return result
