"""PatchCore against the number of training images: training time by stage, peak memory, bank rows,
the default x86 bundle's network and head latency, and image AUROC; exact greedy against the
streamed coreset where exact greedy is affordable; anomalib 2.7's PatchCore on the same images.

    python3 benchmarks/patchcore_scaling.py [--images 60,160,240,1000,4000] [--exact-up-to 240]
        [--textures brick] [--data FOLDER ...] [--anomalib-up-to 240] [--workdir DIR]

Synthesizes each texture with each number of training normals (seed 0, 256², the same 60 test
images; 20 % of the normals are held out, so 60 trains on 48). Each training runs in its own
child process (peak RSS = its ``ru_maxrss``) with every default (``--coreset auto``: exact up to
65,536 patches, streamed above) and, up to ``--exact-up-to`` images, once more with
``--coreset exact``. Stage times come from the trainer's progress calls. Each run's default x86
bundle (OpenVINO fp32) is then timed with edgekit's profile code, all bundles interleaved round
by round; read ratios, not absolutes (a shared 2-core VM), and scored on the test split (image
AUROC of the bundle: what the default bank's head budget costs). A finished run is reused on a re-run
(its result file in the work folder); ``--fresh`` redoes everything.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("embedding", "coreset", "scoring")


def _child(spec: dict) -> dict:
    """Train one run (in this fresh process) and report its stage times and peak RSS."""
    from edgekit.families.patchcore.train import train_patchcore

    marks: dict[str, list[float]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        span = marks.setdefault(stage, [now, now])
        span[1] = now

    started = time.perf_counter()
    options = {"coreset": spec["coreset"]} if spec["coreset"] != "auto" else {}
    run = train_patchcore(spec["data"], spec["out"], overwrite=True, progress=progress, **options)
    seconds = time.perf_counter() - started
    metrics = json.loads((Path(run.path) / "metrics.json").read_text())
    stages = {stage: marks[stage][1] - marks[stage][0] for stage in STAGES if stage in marks}
    return {
        **spec,
        "seconds": seconds,
        "stages": stages,
        "first_level_seconds": metrics.get("coreset_first_level_seconds", 0.0),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": int(run.config["bank_rows"]),
        "patches": int(run.config["patches_seen"]),
        "trained": len(run.config["bank_images"]),
        "selection": run.config["coreset_selection"],
        "image_auroc": metrics.get("image_auroc"),
        "pixel_auroc": metrics.get("pixel_auroc"),
    }


def _train(spec: dict, result: Path, fresh: bool) -> dict:
    if result.is_file() and not fresh:
        return json.loads(result.read_text())
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"training {spec} failed:\n{done.stderr[-3000:]}")
    result.write_text(done.stdout)
    return json.loads(done.stdout)


def _anomalib_child(spec: dict) -> dict:
    """anomalib 2.7's PatchCore fitted (in this fresh process) on the run's trained images."""
    from benchmarks import _anomalib_side
    from edgekit.train.inputs import input_spec_for

    run = json.loads((Path(spec["run"]) / "run.json").read_text())
    images = [Path(path) for path in run["bank_images"]]
    input_spec = input_spec_for(_anomalib_side.BACKBONE, 256)
    _, model, _, seconds = _anomalib_side.fit(
        Path(spec["data"]),
        images,
        Path(spec["work"]),
        seed=0,
        coreset_ratio=0.1,
        num_neighbors=9,
        image_size=256,
        mean=input_spec.mean,
        std=input_spec.std,
    )
    return {
        "fit_seconds": seconds,
        "rows": int(model.model.memory_bank.shape[0]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trained": len(images),
    }


def _anomalib(spec: dict, result: Path, fresh: bool, limit: float) -> dict:
    """Run ``_anomalib_child`` with a time limit; a run that fails or overruns is a row saying so."""
    if result.is_file() and not fresh:
        return json.loads(result.read_text())
    trained = len(json.loads((Path(spec["run"]) / "run.json").read_text())["bank_images"])
    command = [sys.executable, __file__, "--anomalib-child", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, check=False)
        if done.returncode == 0:
            outcome = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            outcome = {"failed": (done.stderr.strip().splitlines() or ["no output"])[-1][:200], "trained": trained}
    except subprocess.TimeoutExpired:
        outcome = {"failed": f"did not finish in {limit / 60:.0f} minutes", "trained": trained}
    result.write_text(json.dumps(outcome))
    return outcome


def _latencies(runs: list[dict], work: Path, rounds: int) -> dict[str, dict]:
    """p50 network and head ms of each run's default x86 bundle, all timed interleaved."""
    import numpy as np
    from PIL import Image

    import edgekit
    from edgekit.data.datasets import open_dataset
    from edgekit.export.pipeline import export_run
    from edgekit.profile.measure import measure_accuracy, measure_latencies

    detectors, names = [], []
    for result in runs:
        bundle = work / "bundles" / Path(result["out"]).name
        if not (bundle / "manifest.json").is_file():
            export_run(Path(result["out"]), bundle, target="x86", overwrite=True)
        detectors.append(edgekit.load(bundle))
        names.append(Path(result["out"]).name)
    image = np.asarray(Image.open(sorted(Path(runs[0]["data"]).glob("test/*/*.png"))[0]).convert("RGB"))
    measured = measure_latencies(detectors, [image] * len(detectors), warmup=5, runs=rounds)
    rows = {}
    for name, detector, result, run in zip(names, detectors, measured, runs):
        accuracy = measure_accuracy(detector, open_dataset(Path(run["data"])))
        rows[name] = {
            **result["stages_p50_ms"],
            "total": result["p50_ms"],
            "bank_rows": int(detector.head.memory_bank.shape[0]),
            "image_auroc": accuracy["image_auroc"],
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--anomalib-child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edgekit-patchcore-scaling"))
    parser.add_argument(
        "--images", default="60,160,240,1000,4000", help="training normals per run (before the hold-out)"
    )
    parser.add_argument("--textures", default="brick", help="synthetic textures, comma-separated")
    parser.add_argument("--data", type=Path, action="append", default=[], help="also a user's MVTec-layout category")
    parser.add_argument("--exact-up-to", type=int, default=240, help="also train with --coreset exact up to N images")
    parser.add_argument("--anomalib-up-to", type=int, default=0, help="also fit anomalib's PatchCore up to N images")
    parser.add_argument("--anomalib-minutes", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=30, help="timed predict rounds per bundle")
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args(argv)
    if args.child or args.anomalib_child:
        child = _child if args.child else _anomalib_child
        print(json.dumps(child(json.loads(args.child or args.anomalib_child))))
        return 0
    from edgekit.data.synth import synthesize

    work = args.workdir
    (work / "results").mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    datasets = []
    for texture in args.textures.split(","):
        for count in (int(n) for n in args.images.split(",")):
            root = work / f"data-{texture}-{count}"
            if not (root / texture / "synth.json").is_file():
                synthesize(root, texture=texture, seed=0, n_train=count, overwrite=True)
            datasets.append((f"{texture}-{count}", root / texture, count))
    datasets += [(data.name, data, None) for data in args.data]
    results, anomalib = [], {}
    for name, data, count in datasets:
        methods = ["auto"] + (["exact"] if count is None or count <= args.exact_up_to else [])
        for method in methods:
            spec = {"data": str(data), "out": str(work / "runs" / f"{name}-{method}"), "coreset": method}
            results.append(_train(spec, work / "results" / f"{name}-{method}.json", args.fresh))
            print(f"trained {name} {method}: {results[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
        if count is not None and count <= args.anomalib_up_to:
            spec = {
                "data": str(data),
                "run": str(work / "runs" / f"{name}-auto"),
                "work": str(work / "anomalib" / name),
            }
            anomalib[name] = _anomalib(
                spec, work / "results" / f"{name}-anomalib.json", args.fresh, args.anomalib_minutes * 60
            )
            print(f"anomalib {name}: {anomalib[name]}", file=sys.stderr, flush=True)
    latency = _latencies(results, work, args.rounds)
    load_after = os.getloadavg()
    print(f"{os.cpu_count()} CPUs; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print()
    print(
        "| data (trained on) | patches | coreset | bank rows | embedding s | coreset s (1st level) | scoring s "
        "| training s | peak RSS MB | coverage radius (bound) | image / pixel AUROC | default bundle rows "
        "| network / head p50 ms | bundle image AUROC |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in results:
        selection = r["selection"]
        radius = f"{selection['radius']:.1f}" if "radius" in selection else f"≤ {selection['radius_bound']:.1f}"
        stages = r["stages"]
        coreset_s = stages.get("coreset", 0.0) + r["first_level_seconds"]
        first = f" ({r['first_level_seconds']:.1f})" if r["first_level_seconds"] else ""
        device = latency[Path(r["out"]).name]
        print(
            f"| {Path(r['out']).name.rsplit('-', 1)[0]} ({r['trained']}) | {r['patches']:,} "
            f"| {r['coreset']}{'' if r['coreset'] == selection['method'] else ': ' + selection['method']} "
            f"| {r['rows']:,} | {stages.get('embedding', 0.0) - r['first_level_seconds']:.1f} "
            f"| {coreset_s:.1f}{first} | {stages.get('scoring', 0.0):.1f} | {r['seconds']:.1f} "
            f"| {r['peak_rss_mb']:.0f} | {radius} | {r['image_auroc']:.3f} / {r['pixel_auroc']:.3f} "
            f"| {device['bank_rows']:,} | {device['network']:.1f} / {device['head']:.1f} | {device['image_auroc']:.3f} |"
        )
    if anomalib:
        print()
        print("| data (trained on) | anomalib 2.7 PatchCore fit s | bank rows | peak RSS MB |")
        print("|---|---:|---:|---:|")
        for name, a in anomalib.items():
            if "failed" in a:
                print(f"| {name} ({a['trained']}) | {a['failed']} | | |")
            else:
                print(f"| {name} ({a['trained']}) | {a['fit_seconds']:.1f} | {a['rows']:,} | {a['peak_rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
