"""predict() latency while the machine is busy: edgekit's thread settings against anomalib's own
OpenVINO inferencer, with 0, 1 and 2 busy background processes, in one alternating run.

    python3 benchmarks/under_load.py --before c1e7948   # ~20 min on a 2-core VM (anomalib trains ~5)

1. Synthesize brick (seed 0); train PatchCore once with anomalib 2.7 (Lite0, 256², coreset 10 %),
   export it with anomalib's ``Engine.export`` (OpenVINO FP32 and INT8_PTQ); export edgekit x86
   bundles of a run holding that very bank: OpenVINO and ONNX Runtime, fp32 and int8, each with
   edgekit's default bank settings, and one OpenVINO fp32 bundle with anomalib's whole bank in
   float32, the same kNN work as anomalib's graph (``--skip-anomalib``: edgekit trains its own
   and the anomalib rows are left out).
2. Start one process per variant × setting (edgekit's default, every ``threads`` value, the
   throughput mode, and with ``--before REF`` the edgekit of git commit REF on the same bundles),
   each with its model loaded and warmed up.
3. For each background level, start that many busy processes (``edgekit.profile.load``), then run
   rounds in which every process times a block of ``predict`` calls on one decoded image, in an
   order rotated every round, so the load and the machine's other noise fall on all alike; then
   one ``predict_batch`` of 16 images each, for images per second. Stop the busy processes.
4. Print p50/p99 per level, each default's distance from the best setting of its bundle, and
   anomalib's time per image over edgekit's; write them to ``--out`` (JSON and Markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import select
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
for path in (str(REPO), str(BENCH)):
    if path not in sys.path:
        sys.path.insert(0, path)

from vs_anomalib import (  # noqa: E402
    CORESET_RATIO,
    HOLDOUT,
    IMAGE_SIZE,
    NUM_NEIGHBORS,
    OV_CONFIG,
    SEED,
    elapsed,
    third_party_output_to,
)

BATCH_IMAGES = 16
#: the bundle holding anomalib's own bank, uncompressed: the same kNN work as anomalib's graph
FULL_BANK = "openvino fp32, full float32 bank"


@dataclass
class Child:
    key: str  # e.g. "openvino fp32 / threads=1"
    bundle: str  # the model it runs ("openvino fp32", "anomalib fp32")
    setting: str  # "default", "threads=1", "throughput", "before", "anomalib"
    job: dict
    env: dict = field(default_factory=dict)
    process: Optional[subprocess.Popen] = None
    per_call: int = 1  # images scored by one call (anomalib's static batch)
    latency: dict = field(default_factory=dict)  # level -> [ms, ...] per call
    batches: dict = field(default_factory=dict)  # level -> [ms of one predict_batch, ...]

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(BENCH / "_under_load_child.py"), json.dumps(self.job)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **self.env},
            cwd=self.job["cwd"],
        )

    def wait_ready(self, timeout_s: float = 600) -> None:
        line = self._line(timeout_s)
        if not line.startswith("READY "):
            raise RuntimeError(f"{self.key}: the child did not start ({line.strip() or 'no output'})")
        self.per_call = int(json.loads(line[len("READY ") :])["images_per_call"])

    def ask(self, command: str, timeout_s: float = 900) -> list[float]:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self._line(timeout_s)
        if not line.startswith("RESULT "):
            raise RuntimeError(f"{self.key}: no answer to {command!r} ({line.strip() or 'no output'})")
        return json.loads(line[len("RESULT ") :])

    def _line(self, timeout_s: float) -> str:
        while True:
            readable, _, _ = select.select([self.process.stdout], [], [], timeout_s)
            if not readable:
                raise RuntimeError(f"{self.key}: no answer within {timeout_s:.0f} s")
            line = self.process.stdout.readline()
            if not line or line.startswith(("READY ", "RESULT ")):
                return line

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def log(message: str) -> None:
    print(message, flush=True)


def build(work: Path, args) -> tuple[dict, dict, list[str], str]:
    """Bundles (name -> folder), anomalib's models (name -> xml, static batch), test images."""
    from edgekit.data.datasets import open_dataset
    from edgekit.data.splits import split_normals
    from edgekit.data.synth import synthesize
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run
    from edgekit.train.inputs import input_spec_for

    noise = work / "third_party_output.log"
    category = synthesize(work / "data", texture="brick", seed=SEED)[0]
    dataset = open_dataset(category)
    train_paths = [s.path for s in dataset.train]
    bank_idx, held_idx = split_normals(len(train_paths), HOLDOUT, SEED)
    anomalib_models: dict = {}
    with third_party_output_to(noise):
        if args.skip_anomalib:
            subprocess.run(
                [sys.executable, "-m", "edgekit", "train", "--data", str(category), "--out", str(work / "edgekit_run")],
                check=True,
            )
        else:
            import _anomalib_side as anomalib_side
            import torch

            torch.set_num_threads(1)
            bank_images = [train_paths[i] for i in bank_idx]
            spec = input_spec_for(anomalib_side.BACKBONE, IMAGE_SIZE)
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
            anomalib_models = {
                "anomalib fp32": (models.fp32_xml, models.static_batch),
                "anomalib int8": (models.int8_xml, models.static_batch),
            }
            anomalib_side.edgekit_run_from_bank(
                work / "edgekit_run",
                dataset=dataset,
                bank=models.memory_bank,
                bank_images=bank_images,
                holdout_images=[train_paths[i] for i in held_idx],
                seed=SEED,
                coreset_ratio=CORESET_RATIO,
                num_neighbors=NUM_NEIGHBORS,
                image_size=IMAGE_SIZE,
            )
        bundles = {}  # edgekit's default export (its default bank), and anomalib's whole bank in float32
        plans = [
            (f"{fmt} {precision}", ExportOptions(format=fmt, precision=precision))
            for fmt in ("openvino", "onnx")
            for precision in ("fp32", "int8")
        ]
        plans.append(
            (FULL_BANK, ExportOptions(format="openvino", precision="fp32", bank_dims="full", bank_dtype="float32"))
        )
        for name, options in plans:
            folder = work / "bundles" / name.replace(",", "").replace(" ", "_")
            export_run(work / "edgekit_run", folder, target="x86", options=options)
            bundles[name] = folder
    test = [str(s.path) for s in dataset.test]
    latency_image = next(str(s.path) for s in dataset.test if s.label == 1)
    return bundles, anomalib_models, test[:BATCH_IMAGES], latency_image


def children_for(
    bundles: dict,
    anomalib_models: dict,
    images: list[str],
    latency_image: str,
    work: Path,
    before: Optional[Path],
    cores: int,
    warmup: int,
) -> list[Child]:
    common = {"latency_image": latency_image, "batch_images": images, "warmup": warmup, "cwd": str(work)}
    children = []
    for name, folder in bundles.items():
        settings = [("default", {})] + [(f"threads={n}", {"threads": n}) for n in range(1, cores)]
        settings += [("throughput", {"mode": "throughput"})] if name != FULL_BANK else []
        for setting, load in settings:
            children.append(
                Child(
                    f"{name} / {setting}",
                    name,
                    setting,
                    {**common, "side": "edgekit", "model": str(folder), "load": load},
                )
            )
        if before is not None and name != FULL_BANK:
            children.append(
                Child(
                    f"{name} / before",
                    name,
                    "before",
                    {**common, "side": "edgekit", "model": str(folder)},
                    env={"PYTHONPATH": str(before)},
                )
            )
    for name, (xml, batch) in anomalib_models.items():
        children.append(
            Child(
                name,
                name,
                "anomalib",
                {**common, "side": "anomalib", "model": str(xml), "ov_config": OV_CONFIG, "static_batch": batch},
            )
        )
    return children


def measure(children: list[Child], levels: list[int], rounds: int, block: int) -> dict:
    from edgekit.profile.load import busy_processes, watch

    loads = {}
    for level in levels:
        with busy_processes(level) as pids, watch(background=pids) as load:
            time.sleep(1.0)  # let the busy processes reach the scheduler's steady state
            for round_index in range(rounds):
                for k in range(len(children)):
                    child = children[(round_index + k) % len(children)]
                    child.latency.setdefault(level, []).extend(child.ask(f"latency {block}"))
            for round_index in range(2):
                for k in range(len(children)):
                    child = children[(round_index + k) % len(children)]
                    child.batches.setdefault(level, []).extend(child.ask(f"batch {BATCH_IMAGES}"))
        loads[level] = load
        log(f"  background {level}: done; load {load.get('loadavg_before')} -> {load.get('loadavg_after')}")
    return loads


def summarise(children: list[Child], levels: list[int]) -> dict:
    rows = {}
    for child in children:
        row = {"bundle": child.bundle, "setting": child.setting, "images_per_call": child.per_call}
        for level in levels:
            calls = np.asarray(child.latency[level])
            row[level] = {
                "p50_ms": float(np.percentile(calls, 50)),
                "p99_ms": float(np.percentile(calls, 99)),
                "per_image_p50_ms": float(np.percentile(calls, 50)) / child.per_call,
                "images_per_s": BATCH_IMAGES / (float(np.median(child.batches[level])) / 1e3),
                "calls": int(calls.size),
            }
        rows[child.key] = row
    return rows


def report(rows: dict, levels: list[int], loads: dict, args, cores: int) -> str:
    lines = [
        "| bundle | setting | "
        + " | ".join(f"{n} busy: p50 / p99 ms" for n in levels)
        + " | "
        + " | ".join(f"{n} busy: img/s (batch {BATCH_IMAGES})" for n in levels)
        + " |",
        "|---|---|" + "---:|" * (2 * len(levels)),
    ]
    for row in rows.values():
        cells = [f"{row[n]['p50_ms']:.1f} / {row[n]['p99_ms']:.1f}" for n in levels]
        cells += [f"{row[n]['images_per_s']:.1f}" for n in levels]
        lines.append(f"| {row['bundle']} | {row['setting']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Default against the best setting of the same bundle (p50; goal ≤ 1.10), and anomalib's "
        "time per image over edgekit's default (goal ≥ 3):",
        "",
        "| bundle | "
        + " | ".join(f"{n} busy: default / best" for n in levels)
        + " | "
        + " | ".join(f"{n} busy: anomalib / edgekit" for n in levels)
        + " |",
        "|---|" + "---:|" * (2 * len(levels)),
    ]
    for bundle in dict.fromkeys(r["bundle"] for r in rows.values() if r["setting"] != "anomalib"):
        mine = [r for r in rows.values() if r["bundle"] == bundle and r["setting"] not in ("before",)]
        default = next(r for r in mine if r["setting"] == "default")
        cells = []
        for n in levels:
            best = min(mine, key=lambda r: r[n]["p50_ms"])
            cells.append(f"{default[n]['p50_ms'] / best[n]['p50_ms']:.2f} (best: {best['setting']})")
        precision = bundle.split(",")[0].split()[-1]
        theirs = rows.get(f"anomalib {precision}")
        for n in levels:
            cells.append(f"{theirs[n]['per_image_p50_ms'] / default[n]['per_image_p50_ms']:.1f}×" if theirs else "—")
        lines.append(f"| {bundle} | " + " | ".join(cells) + " |")
    from edgekit.profile.load import describe_load

    lines += [
        "",
        "Load during each level: " + "; ".join(f"**{n} busy**: {describe_load(loads[n])}" for n in levels),
        "",
        f"Method: one process per row, each with its model loaded and warmed up ({args.warmup} calls); "
        f"per background level {args.rounds} rounds, each round every process times a block of {args.block} "
        f"predict() calls on one decoded 256×256 image (time.perf_counter, batch 1), in an order rotated "
        f"every round; then 2 predict_batch calls of {BATCH_IMAGES} images each (img/s from their median). "
        f"Busy processes: `python -S -c 'while True: pass'`, started and stopped by the benchmark. "
        f"anomalib: OpenVINOInferencer with {OV_CONFIG}; its graph has a static batch, so one call scores "
        f"that many images and 'per image' divides by it. Bundles: edgekit's default export of a run holding "
        f"anomalib's bank (default bank settings), and '{FULL_BANK}' with anomalib's whole bank. "
        f"edgekit default = the x86 target's threads "
        f"(0: all {cores} usable cores), latency mode. 'before' = edgekit at git {args.before} on the same "
        f"bundles. p99 of {args.rounds * args.block} calls is close to their maximum.",
        "",
        f"command: python3 benchmarks/under_load.py {' '.join(sys.argv[1:])}",
    ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="an empty working folder, kept (default: a temporary one)")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "docs" / "under_load",
        help="writes OUT.json and OUT.md (default: docs/under_load)",
    )
    parser.add_argument("--rounds", type=int, default=6, help="rounds per background level (default 6)")
    parser.add_argument("--block", type=int, default=15, help="predict() calls per process per round (default 15)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up calls per process (default 10)")
    parser.add_argument("--levels", default="0,1,2", help="busy background processes per level (default 0,1,2)")
    parser.add_argument("--before", help="also run the edgekit of this git commit on the same bundles")
    parser.add_argument("--skip-anomalib", action="store_true", help="no anomalib rows (edgekit trains its own)")
    args = parser.parse_args(argv)
    levels = [int(n) for n in args.levels.split(",")]
    began = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="edgekit-under-load-"))
    work.mkdir(parents=True, exist_ok=True)
    before = None
    if args.before:
        before = work / "before"
        before.mkdir(exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.before, "edgekit"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
    from edgekit.runtime.threads import usable_cores

    cores = usable_cores()
    log(f"[1/3] data, models and bundles in {work}")
    bundles, anomalib_models, images, latency_image = build(work, args)
    children = children_for(bundles, anomalib_models, images, latency_image, work, before, cores, args.warmup)
    log(f"[2/3] starting {len(children)} processes ({elapsed(began)} so far)")
    try:
        for child in children:
            child.start()
        for child in children:
            child.wait_ready()
        log(f"[3/3] measuring at background levels {levels} ({elapsed(began)} so far)")
        loads = measure(children, levels, args.rounds, args.block)
    finally:
        for child in children:
            child.stop()
    rows = summarise(children, levels)
    text = report(rows, levels, loads, args, cores)
    log("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "loads": loads, "levels": levels}, indent=1))
    args.out.with_suffix(".md").write_text("# predict() under load\n\n" + text + "\n")
    log(f"total run time {elapsed(began)}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
