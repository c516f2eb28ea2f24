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
from functools import cached_property
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
class RunRecord:
    """What every layer reads of ``run.json``, typed, and how it is written back (the one place the
    common fields are spelled); ``settings`` are the family's own fields, as they are."""

    model: str
    backbone: str
    layers: tuple[int, ...]
    input: Any  # edgekit.preprocess.InputSpec: the one pre-processing
    seed: int
    dataset: Mapping[str, Any]  # path, layout, name
    trained_images: tuple[Path, ...]  # what the model was built from (int8 calibrates on them)
    held_out_images: tuple[Path, ...]  # never trained on (thresholds are fitted on them)
    settings: Mapping[str, Any]

    COMMON = ("model", "backbone", "layers", "input", "seed", "dataset", "bank_images", "holdout_images")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RunRecord":
        from edgekit.preprocess import InputSpec

        block = config["input"]
        spec = InputSpec(
            height=int(block["height"]),
            width=int(block["width"]),
            channels=int(block["channels"]),
            mean=tuple(block["mean"]),
            std=tuple(block["std"]),
            resize=block["resize"],
            fit=block.get("fit", "stretch"),
            roi=tuple(block.get("roi", ())),
            tiles=tuple(block.get("tiles", ())),
            tile_overlap=int(block.get("tile_overlap", 0)),
        )
        return cls(
            model=str(config["model"]),
            backbone=str(config["backbone"]),
            layers=tuple(int(level) for level in config["layers"]),
            input=spec,
            seed=int(config["seed"]),
            dataset=dict(config["dataset"]),
            trained_images=tuple(Path(p) for p in config["bank_images"]),
            held_out_images=tuple(Path(p) for p in config["holdout_images"]),
            settings={k: v for k, v in config.items() if k not in cls.COMMON},
        )

    def to_config(self) -> dict[str, Any]:
        spec = self.input
        return {
            "model": self.model,
            "backbone": self.backbone,
            "layers": list(self.layers),
            "seed": self.seed,
            **self.settings,
            "input": {
                "height": spec.height,
                "width": spec.width,
                "channels": spec.channels,
                "mean": list(spec.mean),
                "std": list(spec.std),
                "resize": spec.resize,
                **({"fit": spec.fit} if spec.fit != "stretch" else {}),
                **({"roi": list(spec.roi)} if spec.roi else {}),
                **({"tiles": list(spec.tiles), "tile_overlap": spec.tile_overlap} if spec.tiles else {}),
            },
            "dataset": dict(self.dataset),
            "bank_images": [str(Path(p).resolve()) for p in self.trained_images],
            "holdout_images": [str(Path(p).resolve()) for p in self.held_out_images],
        }


@dataclass(frozen=True)
class Run:
    """A finished training run: its folder and its ``run.json`` contents."""

    path: Path
    config: Mapping[str, Any]

    @property
    def model(self) -> str:
        return str(self.config["model"])

    @cached_property
    def record(self) -> RunRecord:
        """The typed common fields of run.json (a run that lacks one is refused in one line)."""
        try:
            return RunRecord.from_config(self.config)
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgekitError(
                f"run {self.path}: {RUN_FILE} is damaged or incomplete ({type(exc).__name__}: {exc})"
            ) from None

    def input_spec(self):
        """The pre-processing the run trained with (its ``input`` block), as an InputSpec."""
        return self.record.input

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


def dataset_block(dataset: Any) -> dict[str, Any]:
    """run.json's ``dataset``: where the data is, its layout and name."""
    return {"path": str(dataset.root.resolve()), "layout": dataset.layout, "name": dataset.name}


def made(train_seconds: float) -> dict[str, Any]:
    """run.json's fields on when, how fast and by which edgekit the run was made (VOLATILE_FIELDS)."""
    from edgekit import __version__
    from edgekit.clock import created_time

    return {"edgekit_version": __version__, "created": created_time(), "train_seconds": round(train_seconds, 2)}


def load_weights(network: Any, run: Run, file_name: str) -> Any:
    """Load a run's safetensors weights strictly into ``network``; returns it in eval mode."""
    from safetensors.torch import load_file

    weights_path = run.path / file_name
    if not weights_path.is_file():
        raise EdgekitError(f"run {run.path}: {file_name} is missing")
    network.load_state_dict(load_file(str(weights_path)), strict=True)
    return network.eval()


def evaluate_on_test_split(run: "Run", dataset: Any, score: Any, path: str) -> dict[str, Any]:
    """``metrics_on_test_split`` of ``score(test image paths) -> (scores, maps)``; a dataset without
    a test split gives ``{"test_images": 0}``."""
    if not dataset.test:
        return {"test_images": 0}
    scores, maps = score([s.path for s in dataset.test])
    return metrics_on_test_split(dataset, scores, maps, run.input_spec(), path)


def metrics_on_test_split(dataset: Any, scores: np.ndarray, maps: np.ndarray, spec: Any, path: str) -> dict[str, Any]:
    """Image and pixel AUROC of training-path ``scores`` / ``maps`` on the dataset's test split
    (in its order); AUROCs only where both labels exist, pixel AUROC on the normals and the
    anomalies that have masks (``masks`` says how many). ``path`` says what scored."""
    from edgekit.metrics import image_auroc, pixel_auroc

    labels = np.array([s.label for s in dataset.test])
    result: dict[str, Any] = {"test_images": len(labels), "path": path}
    if 0 < labels.sum() < len(labels):
        result["image_auroc"] = image_auroc(labels, scores)
        pixel = dataset.pixel_indices
        if pixel:
            masks = np.stack([dataset.read_mask(dataset.test[i], *spec.map_size, spec=spec) for i in pixel])
            result["pixel_auroc"] = pixel_auroc(masks, np.asarray(maps)[pixel])
        result["masks"] = dataset.masks_note
    return result
