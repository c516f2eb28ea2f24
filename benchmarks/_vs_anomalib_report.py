"""Sizes and the printed report of ``vs_anomalib.py``: install footprints, the results table, the
ratios edgekit / anomalib, the verdict on issue 6's targets, and the method lines."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
Log = Callable[[str], None]
#: issue 6's targets: how many times lower edgekit's figure must be than anomalib's
TARGETS = {"cold start": 10.0, "steady latency p50": 3.0, "deployed size": 10.0}


# --------------------------------------------------------------------------------------------- sizes
def distribution_index() -> dict[str, tuple[str, int]]:
    """Installed file (resolved path) -> (its distribution, that distribution's installed bytes)."""
    from importlib import metadata

    index: dict[str, tuple[str, int]] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        paths = []
        for entry in dist.files or []:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                paths.append(path.resolve())
        total = sum(p.stat().st_size for p in paths)
        for path in paths:
            index.setdefault(str(path), (name, total))
    return index


def install_footprint(loaded_files: list[str], index: dict[str, tuple[str, int]]) -> dict[str, int]:
    """Installed bytes of every distribution a deployment process loaded a file from; edgekit's
    own source tree (not pip-installed here) counts as its .py files."""
    found: dict[str, int] = {}
    edgekit_dir = (REPO / "edgekit").resolve()
    for file in loaded_files:
        path = Path(file).resolve()
        owner = index.get(str(path))
        if owner is not None:
            found[owner[0]] = owner[1]
        elif edgekit_dir in path.parents:
            found["edgekit (source, .py)"] = sum(p.stat().st_size for p in edgekit_dir.rglob("*.py"))
    return dict(sorted(found.items(), key=lambda item: -item[1]))


# --------------------------------------------------------------------------------------------- report
def _median(values: list[float]) -> float:
    return float(np.median(np.asarray(values)))


def summarise(variant, index) -> dict:
    full, colds = variant.measured["full"], variant.measured.get("cold", [])
    footprint = install_footprint(full["loaded_files"], index)
    cuda = {name: size for name, size in footprint.items() if name.lower().startswith(CUDA_DISTRIBUTIONS)}
    return {
        "cold_start_s": _median([c["cold_start_s"] for c in colds]) if colds else full["cold_start_s"],
        "import_load_s": _median([c["import_and_load_s"] for c in colds]) if colds else full["import_and_load_s"],
        "latency_ms": _median(full["call_ms"]) / full["batch"],
        "call_ms": _median(full["call_ms"]),
        "stage_ms": full.get("stage_ms"),
        "peak_rss_mb": full["peak_rss_mb"],
        "deployed_mb": sum(p.stat().st_size for p in variant.files) / 1e6,
        "install_mb": sum(footprint.values()) / 1e6,
        "install_no_cuda_mb": (sum(footprint.values()) - sum(cuda.values())) / 1e6,
        "footprint": footprint,
        "torch": full["torch_imported"],
        "hint": full.get("precision_hint", "unknown"),
        "image_auroc": variant.measured["image_auroc"],
        "pixel_auroc": variant.measured["pixel_auroc"],
        "shift_mean": variant.measured.get("shift_mean"),
        "shift_max": variant.measured.get("shift_max"),
    }


#: Distributions that only serve torch's CUDA build (PyPI's default torch wheel on x86-64 Linux).
CUDA_DISTRIBUTIONS = ("nvidia-", "triton", "cuda-")
ROWS = [
    ("cold start (s, median)", "cold_start_s", "{:.2f}"),
    ("  of which import + load (s)", "import_load_s", "{:.2f}"),
    ("steady latency p50 (ms/image)", "latency_ms", "{:.1f}"),
    ("  per network call (ms)", "call_ms", "{:.1f}"),
    ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
    ("deployed size (MB)", "deployed_mb", "{:.2f}"),
    ("install size (MB)", "install_mb", "{:.0f}"),
    ("  without CUDA libraries (MB)", "install_no_cuda_mb", "{:.0f}"),
    ("image AUROC", "image_auroc", "{:.3f}"),
    ("pixel AUROC", "pixel_auroc", "{:.3f}"),
    ("score shift vs float, mean", "shift_mean", "{:.3f}"),
    ("score shift vs float, max", "shift_max", "{:.3f}"),
]
RATIO_ROWS = (
    "cold_start_s",
    "latency_ms",
    "peak_rss_mb",
    "deployed_mb",
    "install_mb",
    "install_no_cuda_mb",
    "image_auroc",
    "pixel_auroc",
)
PAIRS = [("ek_fp32", "an_fp32"), ("ek_int8", "an_int8"), ("ek_int8_pca", "an_int8"), ("ek_int8_default", "an_int8")]


def _cell(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def print_table(variants: list, summaries: dict[str, dict], *, log: Log) -> None:
    shown = [v for v in variants if v.key in summaries]
    width, column = 30, 16
    log("\nRESULTS (one trained model; every figure measured in this run)")
    log(f"{'':{width}}" + "".join(f"{v.key:>{column}}" for v in shown))
    for title, key, fmt in ROWS:
        log(f"{title:{width}}" + "".join(f"{_cell(summaries[v.key][key], fmt):>{column}}" for v in shown))
    for v in shown:
        stages = summaries[v.key]["stage_ms"]
        notes = list(v.notes)
        if stages:
            notes.append(
                f"per image: pre-processing {stages['preprocess']:.1f} ms, network {stages['network']:.1f} ms, "
                f"numpy kNN head {stages['head']:.1f} ms"
            )
        log(f"  {v.key:16} = {v.label}" + (f"  [{'; '.join(notes)}]" if notes else ""))
    for v in variants:
        if v.key not in summaries:
            log(f"  {v.key:16} = {v.label}: NOT MEASURED - {v.error}")

    pairs = [(e, a) for e, a in PAIRS if e in summaries and a in summaries]
    titles = {key: title for title, key, _ in ROWS}
    column = 24
    log("\nRATIOS edgekit / anomalib (x = how many times lower edgekit is; AUROC: above 1 = edgekit better)")
    log(f"{'':{width}}" + "".join(f"{e + '/' + a:>{column}}" for e, a in pairs))
    for key in RATIO_ROWS:
        cells = []
        for e, a in pairs:
            ratio = summaries[e][key] / summaries[a][key]
            cells.append(f"{ratio:.3f}" if "auroc" in key else f"{ratio:.3f} ({1 / ratio:.1f}x)")
        title = "install, no CUDA libs (MB)" if key == "install_no_cuda_mb" else titles[key]
        log(f"{title:{width}}" + "".join(f"{c:>{column}}" for c in cells))

    log(
        "\nTARGETS (issue 6: cold start >= 10x faster, steady latency >= 3x faster, deployed size >= 10x smaller, "
        "image AUROC no worse)"
    )
    smallest = min((k for k in summaries if k.startswith("ek_")), key=lambda k: summaries[k]["deployed_mb"])
    for e, a in pairs + ([(smallest, "an_fp32")] if "an_fp32" in summaries else []):
        mine, theirs = summaries[e], summaries[a]
        verdicts = []
        for name, key in (
            ("cold start", "cold_start_s"),
            ("steady latency p50", "latency_ms"),
            ("deployed size", "deployed_mb"),
        ):
            factor = theirs[key] / mine[key]
            verdicts.append(f"{name} {factor:.1f}x {'MET' if factor >= TARGETS[name] else 'MISSED'}")
        delta = mine["image_auroc"] - theirs["image_auroc"]
        verdicts.append(f"image AUROC {delta:+.3f} {'MET' if delta >= 0 else 'MISSED'}")
        log(f"  {e} vs {a}: " + "; ".join(verdicts))


def print_footprints(summaries: dict[str, dict], *, log: Log) -> None:
    log("\nINSTALL FOOTPRINT (pip distributions the deployed process loaded files from; installed MB)")
    for key in ("an_fp32", "ek_fp32"):
        if key in summaries:
            items = summaries[key]["footprint"].items()
            parts = ", ".join(
                f"{name} {size / 1e6:.0f}" if size >= 1e6 else f"{name} {size / 1e6:.2f}"
                for name, size in list(items)[:12]
            )
            more = len(items) - 12
            log(
                f"  {key}: {len(items)} distributions, torch imported: {summaries[key]['torch']}; {parts}"
                + (f", ... and {more} more" if more > 0 else "")
            )


def print_method(
    args,
    anomalib_models,
    summaries: dict[str, dict],
    dataset,
    holdout: int,
    *,
    ov_config: dict,
    image_size: int,
    log: Log,
) -> None:
    an = anomalib_models
    log("\nWHAT IS IDENTICAL between the two sides")
    log(
        f"  - one training: anomalib's Patchcore fitted once on the same {len(dataset.train) - holdout} bank images; "
        f"edgekit's bundles carry anomalib's coreset bank ({an.memory_bank.shape[0]} x {an.memory_bank.shape[1]}), "
        f"copied bit for bit into an edgekit run folder"
    )
    log(
        f"  - backbone weights (edgekit's offline Lite0 ImageNet weights loaded into anomalib's TimmFeatureExtractor), "
        f"pyramid (blocks.2 + blocks.4), 3x3 pooling, bilinear resize; normalisation mean=std=0.5 on both; "
        f"images are already {image_size}x{image_size} so neither side resizes"
    )
    log(f"  - torch embeddings before export: max |anomalib - edgekit| = {an.embedding_max_abs_diff:.2e}")
    good = sum(1 for s in dataset.test if s.label == 0)
    log(
        f"  - the test split ({len(dataset.test)} images: {good} good, {len(dataset.test) - good} defective with masks), the OpenVINO build "
        f"and its CPU configuration {ov_config} (anomalib via OpenVINOInferencer(config=...), edgekit's backend "
        f"sets the same two), threads left to OpenVINO on both"
    )
    log("WHAT DIFFERS")
    log(
        f"  - scoring: anomalib runs kNN + score + map inside its OpenVINO graph (static batch {an.static_batch}); "
        f"edgekit's graph stops at the embedding, kNN/score/map run in numpy (batch 1)"
    )
    log(
        f"  - normalisation/thresholds: anomalib's post-processor fitted on its validation split "
        f"({an.validation_images} test images, Folder default val_split_mode=from_test) and clipped to [0, 1]; "
        f"edgekit's fitted on the {holdout} held-out training normals of the exported model"
    )
    log(
        f"  - INT8: anomalib's INT8_PTQ quantizes its whole graph (bank matmul included), calibrated on those "
        f"{an.validation_images} validation images; edgekit quantizes only the backbone, calibrated on the "
        f"{len(dataset.train) - holdout} bank images; its bank stays float32 unless a compressed bank is chosen"
    )
    log(
        "  - AUROC input: anomalib's deployed graph emits only its normalised (clipped) score and map; edgekit's "
        "raw score and map"
    )
    log("METHOD")
    log(
        f"  - every deployed model in fresh `python3` processes; cold start = spawn (parent perf_counter, "
        f"CLOCK_MONOTONIC) to the end of the first prediction, interpreter start-up and imports included; "
        f"median of {args.cold_repeats} processes per variant, interleaved, after one process per variant "
        f"(that one also warms anomalib's ./openvino_cache, which its OpenVINOInferencer enables; edgekit uses none)"
    )
    log(
        f"  - steady latency: {args.warmup} warm-up calls, then {args.runs} timed calls (perf_counter) on one test image "
        f"read from disk each call; anomalib's static batch of {an.static_batch} is filled with the image repeated and "
        f"the call time divided by {an.static_batch} (a camera feeding single frames would wait the whole call)"
    )
    blas = (
        f"OPENBLAS_NUM_THREADS={args.blas_threads} set in every measured process (both sides)"
        if args.blas_threads is not None
        else "OPENBLAS_NUM_THREADS unset (numpy's OpenBLAS picks its own thread count, as in a user's process)"
    )
    log(f"  - BLAS threads: {blas}")
    log("  - peak RSS: VmHWM from /proc/self/status of the measuring process after the timed calls")
    log("  - deployed size: every file of anomalib's export folder (model.xml + model.bin) / of the edgekit bundle")
    log(
        "  - install size: installed bytes (RECORD files) of each pip distribution the deployed process imported a "
        "module from or mapped a shared library of (/proc/self/maps); edgekit's own .py source added; Python and "
        "system libraries not counted on either side"
    )
    log(
        "  - score shift: mean and max |normalised score(int8) - normalised score(fp32)| over the test split, each "
        "side with its own normalisation"
    )
    hints = ", ".join(f"{key} {summary['hint']}" for key, summary in summaries.items())
    log(
        f"  - precision hint: INFERENCE_PRECISION_HINT=f32 requested on CPU for every variant (fp32 and int8), both "
        f"sides; what each compiled model reports: {hints}"
    )
    log(
        "  - install size 'without CUDA libraries' leaves out nvidia-*, triton and cuda-* distributions, which "
        "PyPI's default torch wheel for x86-64 pulls in and this process mapped; torch itself still counts"
    )
    log(
        f"  - anomalib fit {an.fit_seconds:.0f} s (torch threads {args.train_threads}); exports "
        + ", ".join(f"{k} {v:.0f} s" for k, v in an.export_seconds.items())
    )
    log(
        f"  - machine: {_cpu()}, {os.cpu_count()} cores, SHARED 2-core VM (other jobs were running): timings are noisy; "
        f"ratios are measured side by side in the same run. Python {platform.python_version()}"
    )


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> str:
    from importlib import metadata

    names = ("anomalib", "openvino", "nncf", "torch", "timm", "numpy")
    return ", ".join(f"{n} {metadata.version(n)}" for n in names)
