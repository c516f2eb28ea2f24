"""``edgekit export``: a training run → a bundle for one target.

1. the run's torch network → ONNX → the target's format (the FORMATS table);
2. head arrays (the memory bank) written as .npy;
3. a provisional bundle is loaded with the device runtime itself and run on the held-out normal
   images, and the thresholds and normalisation are fitted on those raw scores;
4. the final bundle is written atomically.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from edgekit import __version__
from edgekit.bundle import Bundle, Decision, HeadSpec, Manifest, NetworkSpec, SCHEMA_VERSION, load_bundle, save_bundle
from edgekit.errors import EdgekitError
from edgekit.export.onnx import onnx_to_onnx, torch_to_onnx
from edgekit.export.openvino import onnx_to_openvino
from edgekit.export.targets import Target, get_target
from edgekit.preprocess import InputSpec
from edgekit.progress import ProgressFn, noop
from edgekit.resources import read_toml
from edgekit.runtime.decision import fit_decision
from edgekit.train.run import Run, open_run

#: format name -> converter from the ONNX file into a folder; returns the files, main file first.
FORMATS: dict[str, Callable[[Path, Path], list[Path]]] = {
    "openvino": onnx_to_openvino,
    "onnx": onnx_to_onnx,
}

INPUT_NAME = "image"
OUTPUT_NAME = "embedding"
_PLACEHOLDER = Decision(image_threshold=0.0, pixel_threshold=0.0, image_center=0.0, pixel_center=0.0,
                        method="provisional, replaced before the bundle is written", fitted_on=0)


def export_run(run_dir: str | Path, out: str | Path, *, target: str = "x86", precision: Optional[str] = None,
               overwrite: bool = False, progress: ProgressFn = noop) -> Bundle:
    """Export a training run for ``target``; returns the verified, loaded bundle."""
    run = open_run(run_dir)
    spec = get_target(target)
    precision = precision or spec.default_precision
    if precision not in spec.precisions:
        raise EdgekitError(f"target {spec.name} offers precisions {', '.join(spec.precisions)}, not {precision!r}")
    if spec.format not in FORMATS:
        raise EdgekitError(f"target {spec.name}: format {spec.format!r} cannot be exported by this edgekit")
    if run.model != "patchcore":
        raise EdgekitError(f"run {run.path}: exporting model {run.model!r} is not supported yet")
    out = Path(out)
    if out.exists() and not overwrite:
        raise EdgekitError(f"{out} already exists; choose another --out or pass --overwrite")
    holdout = [Path(p) for p in run.config["holdout_images"]]
    missing = [p for p in holdout if not p.is_file()]
    if missing:
        raise EdgekitError(f"held-out normal image {missing[0]} of run {run.path} is gone; "
                           "thresholds are fitted on them, so restore the dataset or re-train")
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=".edgekit-export-"))
    try:
        manifest, files, arrays = _build(run, spec, precision, staging, progress)
        provisional = save_bundle(staging / "provisional", manifest, files=files, arrays=arrays)
        decision = _fit_on_exported(provisional, holdout, progress)
        manifest = replace(manifest, decision=decision,
                           export={**manifest.export, "seconds": round(time.perf_counter() - started, 2)})
        save_bundle(out, manifest, files=files, arrays=arrays, overwrite=overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_bundle(out)


def _build(run: Run, spec: Target, precision: str, staging: Path, progress: ProgressFn):
    import torch

    from edgekit.train.patchcore import load_network

    progress("export network", 0, 2)
    config = run.config
    network = load_network(run)
    size = int(config["image_size"])
    example = torch.zeros(1, 3, size, size)
    onnx_path = torch_to_onnx(network, example, staging / "network.onnx", input_name=INPUT_NAME,
                              output_names=(OUTPUT_NAME,))
    progress("export network", 1, 2)
    format_dir = staging / "format"
    format_dir.mkdir()
    produced = FORMATS[spec.format](onnx_path, format_dir)
    progress("export network", 2, 2)
    files = {p.name: p for p in produced}
    arrays = {"head/memory_bank.npy": run.array("memory_bank")}
    recipe = read_toml("calibration", run.model)
    input_cfg = config["input"]
    manifest = Manifest(
        schema_version=SCHEMA_VERSION, edgekit_version=__version__, model=run.model,
        backbone=config["backbone"], target=spec.name, runtime=spec.runtime, device=spec.device,
        precision=precision,
        input=InputSpec(height=input_cfg["height"], width=input_cfg["width"], channels=input_cfg["channels"],
                        mean=tuple(input_cfg["mean"]), std=tuple(input_cfg["std"]), resize=input_cfg["resize"],
                        layout=spec.layout, name=INPUT_NAME),
        network=NetworkSpec(format=spec.format, files=tuple(p.name for p in produced), input_name=INPUT_NAME,
                            output_names=(OUTPUT_NAME,)),
        head=HeadSpec(kind="knn", params={"num_neighbors": int(config["num_neighbors"]), "blur_sigma": 4.0},
                      arrays={"memory_bank": "head/memory_bank.npy"}),
        decision=_PLACEHOLDER,
        source={"run": str(run.path.resolve()), "run_fingerprint": run.fingerprint(),
                "dataset": config["dataset"], "bank_rows": config["bank_rows"],
                "feature_dims": config["feature_dims"], "layers": config["layers"]},
        export={"precision": precision, "recipe": f"calibration/{run.model}.toml", "recipe_values": recipe,
                "onnx_opset": 17, "threads": spec.threads, "float_ops": "all (fp32 network, numpy head)",
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    )
    return manifest, files, arrays


def _fit_on_exported(provisional: Path, holdout: list[Path], progress: ProgressFn) -> Decision:
    from edgekit.runtime.detector import load

    detector = load(provisional)
    progress("fit thresholds", 0, len(holdout))
    scores, maps = [], []
    for start in range(0, len(holdout), 8):
        batch_scores, batch_maps = detector.raw(holdout[start:start + 8])
        scores.append(batch_scores)
        maps.append(batch_maps)
        progress("fit thresholds", min(start + 8, len(holdout)), len(holdout))
    import numpy as np

    return fit_decision(np.concatenate(scores), np.concatenate(maps))
