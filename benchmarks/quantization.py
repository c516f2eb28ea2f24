"""x86 fp32 vs int8, side by side in one process: latency, size, accuracy, score shift.

    python3 benchmarks/quantization.py                      # synthesize brick, train, export, compare
    python3 benchmarks/quantization.py --run runs/brick     # an existing run (its dataset is scored)

Both bundles are exported by edgekit (x86 target, OpenVINO CPU plugin) and run by edgekit's
runtime. The runtime pins the f32 inference-precision hint for both: the fp32 reference computes
in f32, the int8 bundle runs its quantized convolutions in int8 and everything else in f32.
Latency is measured interleaved (fp32, int8, fp32, ...; the order alternates each round) on the
same decoded image, so a noisy shared machine slows both alike and the ratios stay meaningful.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekit.check import check_bundles  # noqa: E402
from edgekit.data.datasets import open_dataset  # noqa: E402
from edgekit.export.job import ExportOptions  # noqa: E402
from edgekit.export.pipeline import export_run  # noqa: E402
from edgekit.preprocess import prepare, read_image  # noqa: E402
from edgekit.profile.measure import describe_device  # noqa: E402
from edgekit.runtime.detector import load  # noqa: E402
from edgekit.train.run import open_run  # noqa: E402


def _train(workdir: Path) -> Path:
    from edgekit.data.synth import synthesize
    from edgekit.families.patchcore.train import train_patchcore

    (category,) = synthesize(workdir / "data", texture="brick", seed=0)
    return train_patchcore(category, workdir / "run").path


def _interleaved_latency(detectors: dict, image: np.ndarray, *, warmup: int, runs: int) -> dict:
    """p50 of predict() and of the network call alone, per bundle, measured alternately."""
    batches = {name: prepare([image], d.manifest.input) for name, d in detectors.items()}
    inputs = {name: {d.manifest.network.input_name: batches[name]} for name, d in detectors.items()}
    for _ in range(warmup):
        for d in detectors.values():
            d.predict(image)
    total = {name: [] for name in detectors}
    network = {name: [] for name in detectors}
    names = list(detectors)
    for round_index in range(runs):
        for name in names if round_index % 2 == 0 else names[::-1]:
            d = detectors[name]
            t0 = time.perf_counter()
            d.predict(image)
            t1 = time.perf_counter()
            d.backend.infer(inputs[name])
            t2 = time.perf_counter()
            total[name].append((t1 - t0) * 1e3)
            network[name].append((t2 - t1) * 1e3)
    return {
        name: {"total_p50_ms": float(np.median(total[name])), "network_p50_ms": float(np.median(network[name]))}
        for name in detectors
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="Training run (default: train on synthetic brick).")
    parser.add_argument("--data", type=Path, default=None, help="Labelled dataset (default: the run's).")
    parser.add_argument("--runs", type=int, default=200, help="Timed rounds (each times both bundles).")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        run_dir = args.run or _train(workdir)
        run = open_run(run_dir)
        data = args.data or Path(run.config["dataset"]["path"])
        bundles = {}
        for precision in ("fp32", "int8"):
            t0 = time.perf_counter()
            bundles[precision] = export_run(
                run_dir, workdir / precision, target="x86", options=ExportOptions(precision=precision)
            )
            print(f"exported x86 {precision} in {time.perf_counter() - t0:.1f} s", flush=True)
        check = check_bundles(workdir / "fp32", workdir / "int8", data)
        detectors = {precision: load(workdir / precision) for precision in bundles}
        sample = open_dataset(data).test[0].path
        image = read_image(sample, detectors["fp32"].manifest.input.channels)
        latency = _interleaved_latency(detectors, image, warmup=args.warmup, runs=args.runs)
        device = describe_device("openvino", detectors["fp32"].backend.version)
        quantization = bundles["int8"].manifest.export["quantization"]

        sizes = {p: b.size_bytes() for p, b in bundles.items()}
        network_sizes = {p: sum(b.path(f).stat().st_size for f in b.manifest.network.files) for p, b in bundles.items()}
        shift = check.candidate.scores - check.reference.scores
        fp32, int8 = latency["fp32"], latency["int8"]
        rows = [
            (
                "bundle size (MB)",
                f"{sizes['fp32'] / 1e6:.2f}",
                f"{sizes['int8'] / 1e6:.2f}",
                f"{sizes['int8'] / sizes['fp32']:.2f}",
            ),
            (
                "network files (MB)",
                f"{network_sizes['fp32'] / 1e6:.2f}",
                f"{network_sizes['int8'] / 1e6:.2f}",
                f"{network_sizes['int8'] / network_sizes['fp32']:.2f}",
            ),
            (
                "latency p50, predict() (ms)",
                f"{fp32['total_p50_ms']:.2f}",
                f"{int8['total_p50_ms']:.2f}",
                f"{int8['total_p50_ms'] / fp32['total_p50_ms']:.2f}",
            ),
            (
                "latency p50, network only (ms)",
                f"{fp32['network_p50_ms']:.2f}",
                f"{int8['network_p50_ms']:.2f}",
                f"{int8['network_p50_ms'] / fp32['network_p50_ms']:.2f}",
            ),
            (
                "image AUROC",
                f"{check.reference.auroc:.4f}",
                f"{check.candidate.auroc:.4f}",
                f"drop {check.auroc_drop:.4f}",
            ),
            (
                "image threshold (raw)",
                f"{bundles['fp32'].manifest.decision.image_threshold:.3f}",
                f"{bundles['int8'].manifest.decision.image_threshold:.3f}",
                "each fitted on its own model",
            ),
        ]
        print(
            f"\nx86 fp32 vs int8 — {run.config['model']} / {run.config['backbone']} on {data} "
            f"({check.images} test images), {time.perf_counter() - started:.0f} s in all"
        )
        print(
            f"machine: {device['cpu']}, {device['usable_cores']} usable cores, OpenVINO {device['runtime_version']}, "
            f"CPU plugin, INFERENCE_PRECISION_HINT f32 for both (int8 layers run in int8)"
        )
        print(
            f"latency: batch 1, one decoded image, {args.warmup} warm-up then {args.runs} interleaved rounds, "
            f"time.perf_counter; ratio = int8 / fp32 (below 1: int8 is faster or smaller)"
        )
        widths = [max(len(r[i]) for r in rows + [("measure", "fp32", "int8", "int8 / fp32")]) for i in range(4)]
        for row in [("measure", "fp32", "int8", "int8 / fp32"), *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        print(
            f"decision agreement: {check.agreement:.1%} ({check.images - check.disagreements}/{check.images}); "
            f"normalised-score shift int8 - fp32: mean {shift.mean():+.4f}, mean |shift| {np.abs(shift).mean():.4f}, "
            f"max |shift| {np.abs(shift).max():.4f} (0.5 = threshold)"
        )
        print(
            f"int8 recipe: {quantization['method']}; float: {', '.join(quantization['stay_float'])} + numpy head; "
            f"ops {quantization['ops']}; held-out score agreement {quantization['validation']['agreement']:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
