"""PatchCore's training time against the number of training images: a share of the patches as the
memory bank (``--coreset-ratio``, the default) against a fixed bank (``--coreset-rows``).

    python3 benchmarks/coreset_scaling.py [--workdir DIR] [--images 60,120,300] [--rows 4915]

Synthesizes brick with each number of training normals (seed 0, 256²; 20 % are held out, so 60
gives the demo's 48), trains PatchCore both ways with every other default, and prints per run the
wall time of the whole training and of the coreset stage (from the trainer's progress calls), the
bank rows and the training path's image / pixel AUROC on the same 60 test images. Greedy k-center
costs patches × rows: at a fixed ratio, rows grow with the patches and the time with their
square; at fixed rows it grows linearly. Runs are sequential on one machine: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _train(data: Path, out: Path, **options) -> dict:
    from edgekit.families.patchcore.train import train_patchcore

    marks: dict[str, float] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "coreset":
            marks.setdefault("start", time.perf_counter())
            if done == total:
                marks["end"] = time.perf_counter()

    started = time.perf_counter()
    run = train_patchcore(data, out, overwrite=True, progress=progress, **options)
    metrics = json.loads((run.path / "metrics.json").read_text())
    return {
        "seconds": time.perf_counter() - started,
        "coreset_seconds": marks["end"] - marks["start"],
        "rows": int(run.config["bank_rows"]),
        "patches": int(run.config["patches_seen"]),
        "image_auroc": metrics.get("image_auroc"),
        "pixel_auroc": metrics.get("pixel_auroc"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edgekit-coreset-scaling"))
    parser.add_argument("--images", default="60,120,300", help="training normals per run (before the hold-out)")
    parser.add_argument("--rows", type=int, default=4915, help="the fixed bank (default: the demo's 10 %% of 49,152)")
    args = parser.parse_args(argv)
    from edgekit.data.synth import synthesize

    load_before = os.getloadavg()
    rows = []
    for count in (int(n) for n in args.images.split(",")):
        root = args.workdir / f"data-{count}"
        if not (root / "brick" / "synth.json").is_file():
            synthesize(root, texture="brick", seed=0, n_train=count, overwrite=True)
        for rule, options in (("ratio 0.1", {}), (f"{args.rows} rows", {"coreset_rows": args.rows})):
            result = _train(root / "brick", args.workdir / f"run-{count}-{rule.split()[0]}", **options)
            rows.append((count, rule, result))
            print(f"done {count} {rule}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    print(f"{os.cpu_count()} CPUs; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print()
    print(
        "| training normals | trained on | patches | bank rule | bank rows | coreset s | training s "
        "| image AUROC | pixel AUROC |"
    )
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for count, rule, r in rows:
        trained = r["patches"] // 1024
        print(
            f"| {count} | {trained} | {r['patches']:,} | {rule} | {r['rows']:,} | {r['coreset_seconds']:.1f} "
            f"| {r['seconds']:.1f} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
