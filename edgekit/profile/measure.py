"""Measurements of a bundle on the machine this runs on. Every figure says how it was taken."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.progress import ProgressFn, noop

_COLD_START_CHILD = r"""
import json, resource, sys, time
t_import = time.perf_counter()
import edgekit
detector = edgekit.load(sys.argv[1], **json.loads(sys.argv[4]))
t_loaded = time.perf_counter()
detector.predict(sys.argv[2])
t_first = time.perf_counter()
for _ in range(int(sys.argv[3])):
    detector.predict(sys.argv[2])
# VmHWM belongs to this address space; ru_maxrss would carry the parent's peak across exec
try:
    peak_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"load_s": t_loaded - t_import, "first_predict_s": t_first - t_loaded,
                  "peak_rss_mb": peak_kb / 1024,
                  "torch_imported": "torch" in sys.modules}), flush=True)
"""


def describe_device(runtime_name: str = "", runtime_version: str = "") -> dict:
    """CPU model, cores, memory, OS and the versions of what computed the numbers."""
    cpu = platform.processor() or platform.machine()
    memory_gb = None
    try:
        fields = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
        # x86 names the CPU in "model name"; a Raspberry Pi names the board in "Model"
        cpu = fields.get("model name") or fields.get("hardware") or fields.get("model") or cpu
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gb": memory_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "runtime": runtime_name,
        "runtime_version": runtime_version,
    }


def percentiles(samples_ms: list[float]) -> dict:
    values = np.asarray(samples_ms)
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
        "min_ms": float(values.min()),
        "max_ms": float(values.max()),
    }


def measure_latency(
    detector, image: np.ndarray, *, warmup: int = 10, runs: int = 100, background: int = 0, progress: ProgressFn = noop
) -> dict:
    """End-to-end latency of ``predict`` on one decoded uint8 image, and its stages."""
    return measure_latencies([detector], [image], warmup=warmup, runs=runs, background=background, progress=progress)[0]


def measure_latencies(
    detectors: list,
    images: list[np.ndarray],
    *,
    warmup: int = 10,
    runs: int = 100,
    background: int = 0,
    progress: ProgressFn = noop,
) -> list[dict]:
    """Latency of several bundles, interleaved: each round times every bundle once, in an order
    rotated every round, so a noisy shared machine slows all alike and their ratios hold.

    Each result carries the ``load`` of the machine over the timed runs; ``background`` busy processes
    spin from before the warm-up to the end of the timed runs, to measure under contention."""
    from edgekit.profile.load import busy_processes

    if runs < 1:
        raise EdgekitError(f"--runs must be at least 1, not {runs}")
    with busy_processes(background) as workers:
        samples, load = _timed_rounds(detectors, images, warmup=warmup, runs=runs, workers=workers, progress=progress)
    count = len(detectors)
    results = []
    for detector, image, sample in zip(detectors, images, samples):
        result = percentiles(sample["total"])
        result["throughput_ips"] = 1e3 / result["mean_ms"]
        result["stages_p50_ms"] = {k: float(np.median(sample[k])) for k in ("preprocess", "network", "head")}
        budget = getattr(detector, "budget", None)
        threads = f"{budget.threads} ({budget.mode} mode)" if budget is not None else "runtime default"
        together = (
            f"; interleaved with {count - 1} other variant(s), one of each per round in a rotating order"
            if count > 1
            else ""
        )
        busy = (
            f"; background: {background} busy process{'es' if background != 1 else ''} (one spinning "
            f"Python loop each, from before the warm-up to the end of the timed runs)"
            if background
            else ""
        )
        result["method"] = (
            f"time.perf_counter around predict() on one decoded {image.shape[1]}x{image.shape[0]} "
            f"uint8 image, batch 1, {warmup} warm-up runs then {runs} timed runs, "
            f"threads={threads}{together}{busy}"
        )
        result["load"] = dict(load)
        results.append(result)
    return results


def _timed_rounds(
    detectors: list, images: list[np.ndarray], *, warmup: int, runs: int, workers: list[int], progress: ProgressFn
) -> tuple[list[dict], dict]:
    """Warm-up, then ``runs`` interleaved rounds timed stage by stage; also the load over the timed rounds."""
    from edgekit.preprocess import prepare
    from edgekit.profile.load import watch

    for _ in range(warmup):
        for detector, image in zip(detectors, images):
            detector.predict(image)
    count = len(detectors)
    samples = [{"total": [], "preprocess": [], "network": [], "head": []} for _ in detectors]
    with watch(background=workers) as load:
        for round_index in range(runs):
            for k in range(count):
                i = (round_index + k) % count
                detector, manifest = detectors[i], detectors[i].manifest
                t0 = time.perf_counter()
                batch = prepare([images[i]], manifest.input)
                t1 = time.perf_counter()
                outputs = detector.run_network(batch)
                t2 = time.perf_counter()
                raw = detector.run_head(outputs)
                detector.decide(*raw)
                t3 = time.perf_counter()
                for key, value in (
                    ("total", t3 - t0),
                    ("preprocess", t1 - t0),
                    ("network", t2 - t1),
                    ("head", t3 - t2),
                ):
                    samples[i][key].append(value * 1e3)
            progress("latency", round_index + 1, runs)
    return samples, load


def measure_cold_start(
    bundle: Path, image: Path, *, repeats: int = 3, extra_predictions: int = 20, load_options: Optional[dict] = None
) -> dict:
    """Fresh process → first prediction, median of ``repeats``; also the child's peak RSS."""
    from edgekit.profile.load import watch

    walls, children = [], []
    with watch() as load:
        for _ in range(repeats):
            started = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _COLD_START_CHILD,
                    str(bundle),
                    str(image),
                    str(extra_predictions),
                    json.dumps(load_options or {}),
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise EdgekitError(f"cold-start process failed: {last}")
            child = json.loads(proc.stdout.strip().splitlines()[-1])
            walls.append(wall)
            children.append(child)
    order = int(np.argsort(walls)[len(walls) // 2])
    median = children[order]
    return {
        "cold_start_s": float(np.median(walls)),
        "cold_start_runs_s": [round(w, 3) for w in walls],
        "load_s": median["load_s"],
        "first_predict_s": median["first_predict_s"],
        "peak_rss_mb": float(max(c["peak_rss_mb"] for c in children)),
        "torch_imported": any(c["torch_imported"] for c in children),
        "load": load,
        "method": (
            f"wall time from spawning a fresh `{Path(sys.executable).name}` process to the end of its "
            f"first predict() (includes interpreter start and imports), median of {repeats}; peak RSS "
            f"= max VmHWM of those processes after {1 + extra_predictions} predictions"
        ),
    }


def measure_accuracy(detector, dataset, *, batch_size: int = 8, progress: ProgressFn = noop) -> Optional[dict]:
    """Image AUROC, pixel AUROC, PRO and F1 at the bundle's own threshold on a labelled test split."""
    from edgekit.metrics import f1_at_threshold, image_auroc, pixel_auroc, pro_score

    samples = list(dataset.test)
    labels = np.array([s.label for s in samples])
    if not samples or labels.min() == labels.max():
        return None
    raw_scores: list[float] = []
    spec = detector.manifest.input
    pixel = dataset.pixel_indices
    masks = np.stack([dataset.read_mask(samples[i], *spec.map_size, spec=spec) for i in pixel]) if pixel else None
    maps = np.zeros((len(pixel), *spec.map_size), dtype=np.float32)
    slot = {index: position for position, index in enumerate(pixel)}
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        scores, raw_maps = detector.raw([s.path for s in chunk])
        raw_scores.extend(scores.tolist())
        for offset in range(len(chunk)):
            if start + offset in slot:
                maps[slot[start + offset]] = raw_maps[offset]
        progress("accuracy", start + len(chunk), len(samples))
    raw_scores_arr = np.asarray(raw_scores)
    threshold = detector.manifest.decision.image_threshold
    result = {
        "test_images": len(samples),
        "anomalous": int(labels.sum()),
        "image_auroc": image_auroc(labels, raw_scores_arr),
        "f1_at_threshold": f1_at_threshold(labels, raw_scores_arr, threshold),
        "masks": dataset.masks_note,
        "method": (
            "raw scores of this bundle on the dataset's test split; pixel metrics on its normals and the "
            "anomalies with masks, masks fitted (nearest) as the images were"
        ),
    }
    if masks is not None:
        result["pixel_auroc"] = pixel_auroc(masks, maps)
        result["pro"] = pro_score(masks, maps)
    return result
