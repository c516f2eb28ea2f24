"""What sharing one Detector between threads costs and gives, per backend.

    python3 benchmarks/shared_detector.py [--workdir DIR] [--rounds 5] [--calls 20] [--blas-threads N]

Exports the README demo's PatchCore run for x86 OpenVINO (fp32, int8) and the Raspberry Pi's ONNX
and TFLite formats, then on this machine measures, per bundle:

- single-thread ``predict`` latency with every guard (the Detector's compute gate, the backend's
  infer-request or interpreter pool, BLAS switched to one thread per head call) and without any
  (one bare infer request or interpreter, BLAS held at one thread for the whole measurement).
- throughput (images/s) of N = 1, 2, 4 threads calling ``predict`` on ONE shared Detector, and its
  ratio to one thread.

Rounds are interleaved (every variant once per round, in a shuffled order) and medians reported,
because the machine this runs on is shared and noisy. Timing: ``time.perf_counter``, after 3
warm-up calls per variant; the load average is printed with the table. ``--blas-threads 1`` caps
numpy's BLAS for the whole process.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekit.runtime.detector import Detector, load  # noqa: E402

CASES = [("x86", "openvino", "fp32"), ("x86", "openvino", "int8"), ("rpi4", "onnx", "fp32"), ("rpi4", "tflite", "fp32")]
THREAD_COUNTS = (1, 2, 4)


def _prepare(workdir: Path) -> tuple[Path, dict[tuple[str, str, str], Path]]:
    from edgekit.data.synth import synthesize
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run
    from edgekit.families.patchcore.train import train_patchcore
    from edgekit.train.run import open_run

    category = workdir / "data" / "brick"
    if not (workdir / "run" / "run.json").is_file():
        (category,) = synthesize(workdir / "data", texture="brick", seed=0, overwrite=True)
        train_patchcore(category, workdir / "run", overwrite=True)
    run = open_run(workdir / "run")
    bundles = {}
    for case in CASES:
        out = workdir / "bundles" / "-".join(case)
        if not (out / "manifest.json").is_file():
            export_run(
                run.path, out, target=case[0], options=ExportOptions(format=case[1], precision=case[2]), overwrite=True
            )
        bundles[case] = out
    return category, bundles


def _bare_infer(detector: Detector):
    """The backend's infer without its thread-safety guard (onnxruntime has none: its run is
    thread-safe)."""
    backend = detector.backend
    if backend.name == "openvino":
        request = backend._compiled.create_infer_request()
        return lambda inputs: {name: np.array(request.infer(dict(inputs))[port]) for name, port in backend._outputs}
    if backend.name == "litert":  # one interpreter of its pool, called directly
        runner = backend._idle.get()
        backend._idle.put(runner)
        return runner.infer
    return backend.infer


def _bare_predict(detector: Detector):
    """``predict`` without any guard: no compute gate, no request pool or interpreter lock, and
    BLAS not switched per call (the caller holds it at one thread for the whole measurement)."""
    infer = _bare_infer(detector)
    name = detector.manifest.network.input_name

    def predict(image: np.ndarray):
        embeddings = infer({name: detector._prepare([image], "rgb")})[detector._output_name]
        return detector.decide(*detector.head(embeddings, pool=detector._head_pool))[0]

    return predict


def _latency_ms(predict, image: np.ndarray, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        predict(image)
    return (time.perf_counter() - started) / calls * 1e3


def _throughput(detector: Detector, images: list[np.ndarray], threads: int, calls: int) -> float:
    """Images per second of ``threads`` threads, each making ``calls`` predictions."""
    barrier = threading.Barrier(threads + 1)

    def worker(offset: int) -> None:
        barrier.wait()
        for k in range(calls):
            detector.predict(images[(offset + k) % len(images)])

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in workers:
        thread.join()
    return threads * calls / (time.perf_counter() - started)


def measure(bundle: Path, images: list[np.ndarray], *, rounds: int, calls: int, mode: str = "latency") -> dict:
    from threadpoolctl import threadpool_limits

    detector = load(bundle, mode=mode)
    bare = _bare_predict(detector)
    for _ in range(3):
        detector.predict(images[0])
        bare(images[0])
    latency = {"guarded": [], "bare": []}
    speed = {n: [] for n in THREAD_COUNTS}
    for _ in range(rounds):
        variants = [("latency", "guarded"), ("latency", "bare")] + [("threads", n) for n in THREAD_COUNTS]
        random.shuffle(variants)
        for kind, which in variants:
            if kind == "latency" and which == "guarded":
                latency[which].append(_latency_ms(detector.predict, images[0], calls))
            elif kind == "latency":
                with threadpool_limits(limits=1, user_api="blas"):
                    latency[which].append(_latency_ms(bare, images[0], calls))
            else:
                speed[which].append(_throughput(detector, images, which, max(2, calls // which)))
    return {
        "runtime": detector.backend.name,
        "guarded_ms": statistics.median(latency["guarded"]),
        "bare_ms": statistics.median(latency["bare"]),
        "images_per_s": {n: statistics.median(v) for n, v in speed.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="Keep data, run and bundles here.")
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved rounds (medians are reported).")
    parser.add_argument("--calls", type=int, default=20, help="predict calls per latency measurement.")
    parser.add_argument("--blas-threads", type=int, default=None, help="Cap numpy's BLAS threads (threadpoolctl).")
    parser.add_argument(
        "--mode",
        choices=("latency", "throughput"),
        default="latency",
        help="The Detectors' mode (edgekit.load(mode=...)); default latency.",
    )
    args = parser.parse_args(argv)
    if args.blas_threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.blas_threads, user_api="blas")  # process-wide, before any worker
    random.seed(0)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgekit-shared-"))
    category, bundles = _prepare(workdir)
    paths = sorted((category / "test" / "good").iterdir())[:4] + sorted((category / "test" / "scratch").iterdir())[:4]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    load_before = os.getloadavg()
    rows = []
    for case, bundle in bundles.items():
        result = measure(bundle, images, rounds=args.rounds, calls=args.calls, mode=args.mode)
        rows.append(("-".join(case), result))
        print(f"measured {'-'.join(case)}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    print(
        f"{os.cpu_count()} CPUs; load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/"
        f"{load_before[2]:.2f}, after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}; "
        f"{args.rounds} interleaved rounds, medians; {args.calls} calls per latency figure; "
        f"BLAS threads {args.blas_threads or 'numpy default'}; {args.mode} mode"
    )
    print()
    print(
        "| bundle | runtime | 1-thread ms, guarded | bare | guard cost | img/s 1 thread | 2 threads | 4 threads "
        "| ratio 2/1 | ratio 4/1 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        bare = r["bare_ms"]
        cost = f"{(r['guarded_ms'] / bare - 1) * 100:+.1f} %"
        speed = r["images_per_s"]
        print(
            f"| {name} | {r['runtime']} | {r['guarded_ms']:.2f} | {bare:.2f} | {cost} "
            f"| {speed[1]:.1f} | {speed[2]:.1f} | {speed[4]:.1f} | {speed[2] / speed[1]:.2f} "
            f"| {speed[4] / speed[1]:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
