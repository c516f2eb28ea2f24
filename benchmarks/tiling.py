"""Tiling against a plain resize on high-resolution images with small defects: accuracy and latency.

    python3 benchmarks/tiling.py [--workdir DIR] [--sizes 1024,2048] [--models dfm,padim,patchcore] [--runs 20]

For each image side (brick, seed 0, ``edgekit.data.high_res``: 40 train normals, 20 test normals,
5 defects of each of the 4 kinds, each painted inside a random side/8 window, so it covers 0.01-0.1 %
of the image; sensor noise sigma 3), each model is trained twice at a 256-pixel input: ``plain``
resizes the whole image to 256x256, ``tiled`` cuts it into (side/256)^2 tiles of 256 (overlap 32,
the default), and both are exported for x86 (OpenVINO fp32, f32 hint, the default threshold rule).
PatchCore keeps 4,096 bank rows in both (tiles give (side/256)² times the patches; the default
ratio would make the tiled bank 16-64 times larger and its head as much slower).

Printed per size and model: image and pixel AUROC of each bundle on the test split, the share of
test anomalies each flags at its own threshold, and predict() latency on one decoded full-size test
image, p50 of ``--runs`` rounds with both bundles interleaved in one process (the ratio is what
holds on a noisy machine), with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekit.data.datasets import open_dataset  # noqa: E402
from edgekit.metrics import image_auroc, pixel_auroc  # noqa: E402
from edgekit.preprocess import read_image  # noqa: E402
from edgekit.runtime.detector import load  # noqa: E402

TILE = 256
BANK_ROWS = 4096


def _data(workdir: Path, size: int) -> Path:
    from edgekit.data.high_res import write_high_res

    dest = workdir / f"brick{size}"
    if (dest / "high_res.json").is_file():  # a kept --workdir: reuse
        return dest
    return write_high_res(dest, size=size, n_train=40, n_test_good=20, n_per_defect=5)


def _bundle(workdir: Path, data: Path, model: str, size: int, tiled: bool) -> tuple[Path, float]:
    """Train (if not kept) and export one variant; returns the bundle and the training seconds."""
    import json

    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run
    from edgekit.train.engine import train

    name = f"{model}-{size}-{'tiled' if tiled else 'plain'}"
    run_dir, bundle = workdir / "runs" / name, workdir / "bundles" / name
    if not (run_dir / "run.json").is_file():
        grid = size // TILE
        options = {"tiles": (grid, grid)} if tiled else {}
        if model == "patchcore":  # one bank size for both: tiles give (side/256)² times the patches
            options["coreset_rows"] = BANK_ROWS
        train(model, data, run_dir, image_size=TILE, overwrite=True, **options)
    if not (bundle / "manifest.json").is_file():
        export_run(run_dir, bundle, target="x86", options=ExportOptions(precision="fp32"), overwrite=True)
    return bundle, float(json.loads((run_dir / "run.json").read_text())["train_seconds"])


def _accuracy(detector, dataset) -> dict[str, float]:
    spec = detector.manifest.input
    labels = np.array([s.label for s in dataset.test])
    scores, maps = [], []
    for start in range(0, len(dataset.test), 4):
        batch_scores, batch_maps = detector.raw([s.path for s in dataset.test[start : start + 4]])
        scores.append(batch_scores)
        maps.append(batch_maps)
    scores_all, maps_all = np.concatenate(scores), np.concatenate(maps)
    masks = np.stack([dataset.read_mask(s, *spec.map_size, spec=spec) for s in dataset.test])
    flagged = scores_all > detector.manifest.decision.image_threshold
    return {
        "image_auroc": image_auroc(labels, scores_all),
        "pixel_auroc": pixel_auroc(masks, maps_all),
        "found": float(flagged[labels == 1].mean()),
        "false_alarms": float(flagged[labels == 0].mean()),
    }


def _latency(detectors: list, image: np.ndarray, runs: int) -> list[float]:
    for detector in detectors:
        for _ in range(3):
            detector.predict(image)
    times: list[list[float]] = [[] for _ in detectors]
    for round_index in range(runs):
        for k in range(len(detectors)):
            i = (round_index + k) % len(detectors)
            start = time.perf_counter()
            detectors[i].predict(image)
            times[i].append((time.perf_counter() - start) * 1e3)
    return [float(np.median(t)) for t in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="Keep data, runs and bundles here.")
    parser.add_argument("--sizes", default="1024,2048")
    parser.add_argument("--models", default="dfm,padim,patchcore")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgekit-tiling-"))
    print(
        "| side | model | input | image AUROC | pixel AUROC | anomalies flagged | normals flagged "
        "| p50 ms | tiled / plain | train s |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        data = _data(workdir, size)
        dataset = open_dataset(data)
        image = read_image(dataset.test[0].path)
        for model in args.models.split(","):
            built = [_bundle(workdir, data, model, size, tiled) for tiled in (False, True)]
            detectors = [load(bundle) for bundle, _ in built]
            accuracy = [_accuracy(detector, dataset) for detector in detectors]
            load_before = os.getloadavg()[0]
            p50 = _latency(detectors, image, args.runs)
            load_after = os.getloadavg()[0]
            for detector, figures, ms, (_, seconds) in zip(detectors, accuracy, p50, built):
                spec = detector.manifest.input
                grid = f"{spec.tiles[0]}x{spec.tiles[1]} tiles, {spec.map_size[0]}²" if spec.tiles else "resize"
                print(
                    f"| {size}² | {model} | {spec.height}² {grid} | {figures['image_auroc']:.3f} | "
                    f"{figures['pixel_auroc']:.3f} | {figures['found']:.0%} | {figures['false_alarms']:.0%} | "
                    f"{ms:.1f} | {'' if not spec.tiles else f'{ms / p50[0]:.1f}x'} | {seconds:.0f} |"
                )
                detector.close()
            print(f"<!-- {size} {model}: load {load_before:.2f} -> {load_after:.2f} -->", flush=True)
    print(f"\nx86 OpenVINO fp32 (f32 hint), 2 threads, latency mode; data, runs and bundles in {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
