"""edgekit against anomalib's own deployment path, in one run on one machine.

    python3 benchmarks/vs_anomalib.py      # 8-14 minutes on a 2-core VM, half of it anomalib's training

1. Synthesize the embedded default data (brick, seed 0) and split its 60 training normals with
   edgekit's rule: 48 for the bank, 12 held out (edgekit fits its thresholds on those).
2. Train PatchCore ONCE, with anomalib 2.7 (tf_efficientnet_lite0, blocks.2 + blocks.4, 256²,
   coreset 10 %, fixed seed) on the 48 bank images, offline (edgekit's packaged ImageNet weights).
3. Deploy that one model two ways: anomalib's ``Engine.export`` to OpenVINO FP32 and INT8_PTQ, run
   with anomalib's ``OpenVINOInferencer``; and edgekit x86 bundles built from anomalib's very bank
   (fp32, int8, and compressed banks), run with ``edgekit.load``.
4. Measure every deployment in fresh processes (see METHOD below) and print one table with ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

#: The same OpenVINO CPU configuration on both sides: f32 compute (no bf16/AMX down-casting), latency mode.
OV_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
SEED, IMAGE_SIZE, CORESET_RATIO, NUM_NEIGHBORS, HOLDOUT = 0, 256, 0.1, 9, 0.2


@dataclass
class Variant:
    key: str
    side: str  # "anomalib" | "edgekit"
    label: str
    model: Optional[Path] = None  # anomalib: model.xml; edgekit: bundle folder
    files: list[Path] = field(default_factory=list)
    float_key: Optional[str] = None  # the float variant its score shift is measured against
    error: Optional[str] = None
    notes: list[str] = field(default_factory=list)
    measured: dict = field(default_factory=dict)


_CONSOLE = sys.stdout  # replaced in main() by a duplicate of the real stdout


def log(message: str) -> None:
    _CONSOLE.write(message + "\n")
    _CONSOLE.flush()


@contextlib.contextmanager
def third_party_output_to(path: Path):
    """Send everything written to fds 1 and 2 (lightning tables, torch.onnx and NNCF chatter, C++
    warnings) to ``path``; ``log`` still reaches the console."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


# --------------------------------------------------------------------------------------------- build
def build_edgekit_variants(run_dir: Path, out: Path, bank: np.ndarray) -> list[Variant]:
    """fp32 with anomalib's exact bank, int8 with it, and int8 with edgekit's compressed banks."""
    from edgekit.errors import EdgekitError
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run

    plans = [
        (
            "ek_fp32",
            "edgekit fp32 (anomalib's bank, float32)",
            None,
            dict(precision="fp32", bank_dims="full", bank_dtype="float32"),
        ),
        (
            "ek_int8",
            "edgekit int8 (anomalib's bank, float32)",
            "ek_fp32",
            dict(precision="int8", bank_dims="full", bank_dtype="float32"),
        ),
        (
            "ek_int8_pca",
            "edgekit int8 + PCA-auto int8 bank",
            "ek_fp32",
            dict(precision="int8", bank_dims="auto", bank_dtype="int8"),
        ),
        ("ek_int8_default", "edgekit int8, default bank", "ek_fp32", dict(precision="int8")),
    ]
    variants = []
    for key, label, float_key, options in plans:
        variant = Variant(key=key, side="edgekit", label=label, float_key=float_key)
        variants.append(variant)
        started = time.perf_counter()
        try:
            bundle = export_run(run_dir, out / key, target="x86", options=ExportOptions(**options))
        except TypeError as exc:  # an ExportOptions field this edgekit does not have yet
            variant.error = f"not available in this edgekit: {str(exc).splitlines()[0]}"
        except EdgekitError as exc:
            variant.error = f"edgekit refused the export: {exc}"
        except Exception as exc:  # a failed variant is a row saying why, not the end of the benchmark
            variant.error = f"export failed: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
        if variant.error is not None:
            log(f"  {key}: {variant.error}")
            continue
        variant.model = out / key
        variant.files = [p for p in variant.model.rglob("*") if p.is_file()]
        bank_note = bundle.manifest.export.get("bank") or bundle.manifest.head.params.get("bank") or {}
        if bank_note:
            variant.notes.append(
                "bank " + ", ".join(f"{k}={bank_note[k]}" for k in ("rows", "dims", "dtype") if k in bank_note)
            )
        if key == "ek_fp32":
            same = np.array_equal(bundle.array("memory_bank"), bank)
            variant.notes.append("bank == anomalib's bank, bit for bit" if same else "bank DIFFERS from anomalib's")
        if key == "ek_int8_pca" and bank_note.get("dims") == bank.shape[1]:
            variant.notes.append("PCA did not reduce the dimensions (bank_dims ignored or auto kept all)")
        log(f"  {key}: exported in {time.perf_counter() - started:.0f} s ({'; '.join(variant.notes)})")
    return variants


# --------------------------------------------------------------------------------------------- measure
def run_child(variant: Variant, job: dict, work: Path, extra_env: dict[str, str]) -> dict:
    """Spawn a fresh interpreter for one measurement; returns its RESULT dict."""
    job_path = work / f"job-{variant.key}-{job['mode']}.json"
    job_path.write_text(json.dumps(job))
    env = {
        **os.environ,
        **extra_env,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    cwd = work / f"cwd-{variant.side}"  # anomalib's inferencer writes ./openvino_cache here
    cwd.mkdir(exist_ok=True)
    command = [sys.executable, str(BENCH / "_deployed_child.py"), str(job_path)]
    start = time.perf_counter()
    done = subprocess.run(command + [repr(start)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{variant.key} child failed (exit {done.returncode}): {tail}")
    return json.loads(lines[-1][len("RESULT ") :])


def measure(
    variants: list[Variant],
    *,
    test_images: list[str],
    latency_image: str,
    static_batch: int,
    work: Path,
    warmup: int,
    runs: int,
    cold_repeats: int,
    extra_env: dict[str, str],
) -> None:
    live = [v for v in variants if v.error is None]
    for variant in live:  # first process: also warms anomalib's OpenVINO cache, as its users would have it
        job = {
            "side": variant.side,
            "model": str(variant.model),
            "mode": "full",
            "ov_config": OV_CONFIG,
            "static_batch": static_batch,
            "latency_image": latency_image,
            "test_images": test_images,
            "warmup": warmup,
            "runs": runs,
            "outputs": str(work / f"outputs-{variant.key}.npz"),
        }
        try:
            variant.measured["full"] = run_child(variant, job, work, extra_env)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            variant.error = str(exc)
            log(f"  {variant.key}: {variant.error}")
            continue
        log(
            f"  {variant.key}: full run done (first-process cold start "
            f"{variant.measured['full']['cold_start_s']:.1f} s)"
        )
    for repeat in range(cold_repeats):  # interleaved, so background load hits both sides alike
        for variant in [v for v in variants if v.error is None]:
            job = {
                "side": variant.side,
                "model": str(variant.model),
                "mode": "cold",
                "ov_config": OV_CONFIG,
                "static_batch": static_batch,
                "latency_image": latency_image,
            }
            try:
                variant.measured.setdefault("cold", []).append(run_child(variant, job, work, extra_env))
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                variant.error = str(exc)
                log(f"  {variant.key}: {variant.error}")
        log(f"  cold starts: repeat {repeat + 1}/{cold_repeats} done")


def accuracy(variants: list[Variant], dataset, work: Path) -> None:
    from edgekit.metrics import image_auroc, pixel_auroc

    labels = np.array([s.label for s in dataset.test])
    masks = np.stack([dataset.read_mask(s, IMAGE_SIZE, IMAGE_SIZE) for s in dataset.test])
    by_key = {v.key: v for v in variants}
    for variant in variants:
        if variant.error is None:
            with np.load(work / f"outputs-{variant.key}.npz", allow_pickle=False) as data:
                variant.measured["outputs"] = {name: data[name] for name in data.files}
    for variant in variants:
        if variant.error is not None:
            continue
        outputs = variant.measured["outputs"]
        variant.measured["image_auroc"] = image_auroc(labels, outputs["raw"])
        variant.measured["pixel_auroc"] = pixel_auroc(masks, outputs["maps"])
        reference = by_key.get(variant.float_key or "")
        if reference is not None and reference.error is None:
            shift = np.abs(outputs["normalised"] - reference.measured["outputs"]["normalised"])
            variant.measured["shift_mean"], variant.measured["shift_max"] = float(shift.mean()), float(shift.max())


# --------------------------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> int:
    global _CONSOLE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work",
        type=Path,
        help="an empty working folder, kept afterwards (default: a temporary one, removed unless the run fails)",
    )
    parser.add_argument("--runs", type=int, default=30, help="timed calls per variant (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up calls per variant (default 5)")
    parser.add_argument("--cold-repeats", type=int, default=3, help="cold-start processes per variant (default 3)")
    parser.add_argument(
        "--train-threads",
        type=int,
        default=1,
        help="torch threads while anomalib trains (default 1: its coreset loop is memory-bound "
        "and runs faster single-threaded on a busy 2-core VM)",
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        help="set OPENBLAS_NUM_THREADS in every measured process, both sides (default: unset, "
        "as a user's process would run)",
    )
    args = parser.parse_args(argv)
    if args.work is not None and args.work.exists() and (not args.work.is_dir() or any(args.work.iterdir())):
        parser.error(f"--work {args.work} must be an empty folder or not exist yet")
    began = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="edgekit-vs-anomalib-"))
    work.mkdir(parents=True, exist_ok=True)
    _CONSOLE = os.fdopen(os.dup(1), "w", buffering=1)
    noise = work / "third_party_output.log"
    try:
        code = _run(args, work, noise, began)
    except BaseException:
        if noise.is_file():
            log("last lines of the libraries' output (" + str(noise) + "):")
            log("\n".join(noise.read_text(errors="replace").splitlines()[-15:]))
        log(f"the working folder is kept for inspection: {work}")
        raise
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return code


def _run(args, work: Path, noise: Path, began: float) -> int:
    import _anomalib_side as anomalib_side
    import _vs_anomalib_report as report

    from edgekit.data.datasets import open_dataset
    from edgekit.data.splits import split_normals
    from edgekit.data.synth import synthesize
    from edgekit.train.inputs import input_spec_for

    log(f"edgekit vs anomalib - {report.versions()}")
    log("Timings are from a SHARED 2-core VM (other helpers' jobs running at the same time); read the ratios.")
    log("[1/5] synthesizing brick (seed 0)")
    category = synthesize(work / "data", texture="brick", seed=SEED)[0]
    dataset = open_dataset(category)
    train_paths = [s.path for s in dataset.train]
    bank_idx, held_idx = split_normals(len(train_paths), HOLDOUT, SEED)
    bank_images = [train_paths[i] for i in bank_idx]
    holdout_images = [train_paths[i] for i in held_idx]
    spec = input_spec_for(anomalib_side.BACKBONE, IMAGE_SIZE)

    log(
        f"[2/5] anomalib: training on {len(bank_images)} images and exporting FP32 + INT8_PTQ "
        f"(library output goes to {noise.name})"
    )
    with third_party_output_to(noise):
        import torch

        torch.set_num_threads(args.train_threads)
        models = anomalib_side.train_and_export(
            category,
            bank_images,
            work,
            seed=SEED,
            coreset_ratio=CORESET_RATIO,
            num_neighbors=NUM_NEIGHBORS,
            image_size=IMAGE_SIZE,
            mean=spec.mean,
            std=spec.std,
            log=log,
        )
    log(f"[3/5] edgekit: run folder from anomalib's bank, then x86 bundles ({elapsed(began)} so far)")
    with third_party_output_to(noise):
        run_dir = anomalib_side.edgekit_run_from_bank(
            work / "edgekit_run",
            dataset=dataset,
            bank=models.memory_bank,
            bank_images=bank_images,
            holdout_images=holdout_images,
            seed=SEED,
            coreset_ratio=CORESET_RATIO,
            num_neighbors=NUM_NEIGHBORS,
            image_size=IMAGE_SIZE,
        )
        variants = [
            Variant(
                "an_fp32",
                "anomalib",
                "anomalib OpenVINO FP32 (Engine.export)",
                models.fp32_xml,
                [p for p in models.fp32_xml.parent.iterdir() if p.is_file()],
            ),
            Variant(
                "an_int8",
                "anomalib",
                "anomalib OpenVINO INT8_PTQ (Engine.export)",
                models.int8_xml,
                [p for p in models.int8_xml.parent.iterdir() if p.is_file()],
                float_key="an_fp32",
            ),
        ]
        variants += build_edgekit_variants(run_dir, work / "bundles", models.memory_bank)

    log(f"[4/5] measuring in fresh processes ({elapsed(began)} so far)")
    test_images = [str(s.path) for s in dataset.test]
    latency_image = next(str(s.path) for s in dataset.test if s.label == 1)
    measure(
        variants,
        test_images=test_images,
        latency_image=latency_image,
        static_batch=models.static_batch,
        work=work,
        warmup=args.warmup,
        runs=args.runs,
        cold_repeats=args.cold_repeats,
        extra_env=_blas_env(args.blas_threads),
    )
    log(f"[5/5] accuracy, sizes ({elapsed(began)} so far)")
    accuracy(variants, dataset, work)
    index = report.distribution_index()
    summaries = {v.key: report.summarise(v, index) for v in variants if v.error is None}
    report.print_table(variants, summaries, log=log)
    report.print_footprints(summaries, log=log)
    report.print_method(
        args, models, summaries, dataset, len(holdout_images), ov_config=OV_CONFIG, image_size=IMAGE_SIZE, log=log
    )
    log("\ncommand: python3 benchmarks/vs_anomalib.py " + " ".join(sys.argv[1:]))
    log(f"total run time {elapsed(began)}")
    return 0 if {"an_fp32", "ek_fp32"} <= set(summaries) else 1


def _blas_env(threads: Optional[int]) -> dict[str, str]:
    return {} if threads is None else {"OPENBLAS_NUM_THREADS": str(threads)}


def elapsed(began: float) -> str:
    seconds = time.perf_counter() - began
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


if __name__ == "__main__":
    sys.exit(main())
