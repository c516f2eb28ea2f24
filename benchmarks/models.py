"""The models side by side: size, work, training time, accuracy, latency and bundle size.

    python3 benchmarks/models.py [--models sae,dae,...] [--textures brick,grass,gravel]
                                 [--workdir DIR] [--runs 50] [--reuse]

For every model and texture it synthesizes the embedded default (RGB 256² for the anomalib
models, grey 128² for the autoencoders, seed 0), trains the model with its defaults and reads
the training path's image and pixel AUROC from the run. On brick it exports an x86 OpenVINO fp32
and int8 bundle per model and measures every bundle's predict() latency in ONE interleaved run
(each round times every bundle once, in a rotating order; the machine may be shared, so compare
rows measured together). Prints a Markdown table and writes DIR/models.json.

Columns: parameters of the exported network; GFLOPs per image = the network's (torch
FlopCounterMode at export, convolutions and matrix products) + the numpy head's
(``head.cost``); train time (wall clock, the run's ``train_seconds``, brick); image / pixel AUROC
on brick, grass, gravel (training path, 60 test images each); image AUROC of the x86 fp32 and
int8 bundles on brick (what int8 costs in accuracy); x86 p50 latency of the fp32 and
int8 bundles (pre-processing, network, head); size of the fp32 / int8 bundle on disk.
EfficientAD's default teacher is distilled first into DIR/cache (``teacher_seconds``, 0 when it
was there already), so its train time is the detector's alone. ``--reuse`` keeps runs and bundles already in DIR (so a model can be added to a table made
earlier; its latencies are still measured again, together with every other bundle).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekit.families.registry import FAMILIES  # noqa: E402

#: every exported family, in the registry's order
MODELS = tuple(name for name, family in FAMILIES.items() if family.export_parts)
GREY_MODELS = {"sae", "dae"}
TEXTURES = ("brick", "grass", "gravel")


def _data(workdir: Path, grey: bool, textures) -> dict[str, Path]:
    from edgekit.data.synth import synthesize

    root = workdir / ("data-grey128" if grey else "data-rgb256")
    missing = [t for t in textures if not (root / t).is_dir()]
    for texture in missing:
        synthesize(root, texture=texture, seed=0, size=128 if grey else 256, grayscale=grey)
    return {t: root / t for t in textures}


def _train(model: str, data: Path, out: Path, reuse: bool):
    from edgekit.train.engine import train
    from edgekit.train.run import open_run

    if reuse and (out / "run.json").is_file():
        return open_run(out)
    return train(model, data, out, overwrite=True)


def _export(run, out: Path, precision: str, reuse: bool) -> Path:
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run

    if not (reuse and (out / "manifest.json").is_file()):
        export_run(run.path, out, target="x86", options=ExportOptions(precision=precision), overwrite=True)
    return out


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def _network_parameters(run) -> int:
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import family_parts

    return int(sum(p.numel() for p in family_parts(run, ExportOptions()).network.parameters()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--textures", default=",".join(TEXTURES))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edgekit-models"))
    parser.add_argument("--runs", type=int, default=50, help="timed rounds (each times every bundle once)")
    parser.add_argument("--reuse", action="store_true", help="keep runs and bundles already in --workdir")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    textures = [t.strip() for t in args.textures.split(",") if t.strip()]
    unknown = [m for m in models if m not in MODELS] + [t for t in textures if t not in TEXTURES]
    if unknown or "brick" not in textures:
        sys.exit(f"error: unknown model or texture {unknown}, or brick missing (latency is measured on brick)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    import edgekit
    from edgekit.errors import EdgekitError
    from edgekit.preprocess import read_image
    from edgekit.profile.measure import describe_device, measure_latencies

    rows: dict[str, dict] = {}
    for model in models:
        data = _data(args.workdir, model in GREY_MODELS, textures)
        row: dict = {"model": model, "auroc": {}}
        if model == "efficient_ad":  # its default teacher, distilled once into DIR/cache, timed on its own
            import os

            os.environ.setdefault("EDGEKIT_CACHE", str(args.workdir / "cache"))
            from edgekit.families.efficient_ad.train import default_teacher

            t0 = time.perf_counter()
            default_teacher()
            row["teacher_seconds"] = round(time.perf_counter() - t0, 1)
        for texture in textures:
            t0 = time.perf_counter()
            run = _train(model, data[texture], args.workdir / "runs" / model / texture, args.reuse)
            metrics = json.loads((run.path / "metrics.json").read_text())
            row["auroc"][texture] = {"image": metrics.get("image_auroc"), "pixel": metrics.get("pixel_auroc")}
            if texture == "brick":
                row.update(
                    train_seconds=float(run.config["train_seconds"]),
                    backbone=run.config["backbone"],
                    input=[run.config["input"][k] for k in ("channels", "height", "width")],
                    parameters=_network_parameters(run),
                    run=run,
                )
            print(
                f"{model} {texture}: image {row['auroc'][texture]['image']:.3f} "
                f"pixel {row['auroc'][texture]['pixel']:.3f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        run = row.pop("run")
        row["bundles"], row["refused"] = {}, {}
        for precision in ("fp32", "int8"):
            try:
                row["bundles"][precision] = _export(
                    run, args.workdir / "bundles" / f"{model}-{precision}", precision, args.reuse
                )
            except EdgekitError as exc:  # a precision the model's recipe refuses is a row, not a crash
                row["refused"][precision] = str(exc)
        rows[model] = row

    from edgekit.data.datasets import open_dataset
    from edgekit.metrics import image_auroc

    detectors, images, keys = [], [], []
    for model, row in rows.items():
        brick = _data(args.workdir, model in GREY_MODELS, ["brick"])["brick"]
        test_image = sorted((brick / "test" / "scratch").glob("*.png"))[0]
        test = open_dataset(brick).test
        for precision, bundle in row["bundles"].items():
            detector = edgekit.load(bundle)
            scores, _ = detector.raw([s.path for s in test])
            row.setdefault("bundle_image_auroc", {})[precision] = round(
                image_auroc(np.array([s.label for s in test]), scores), 4
            )
            detectors.append(detector)
            images.append(read_image(test_image, detector.manifest.input.channels))
            keys.append((model, precision))
            row.setdefault("size_mb", {})[precision] = round(_size_mb(bundle), 2)
            if precision == "fp32":
                grid_h, grid_w = detector.manifest.export["output_shape"][-2:]
                head_flops, _ = detector.head.cost(grid_h, grid_w)
                row["gflops"] = round((detector.manifest.export["network_flops"] + head_flops) / 1e9, 3)
    print(f"measuring {len(detectors)} bundles, {args.runs} interleaved rounds ...", flush=True)
    latencies = measure_latencies(detectors, images, warmup=5, runs=args.runs)
    for (model, precision), result in zip(keys, latencies):
        rows[model].setdefault("latency_p50_ms", {})[precision] = round(result["p50_ms"], 2)
        rows[model].setdefault("stages_p50_ms", {})[precision] = result["stages_p50_ms"]
        rows[model]["bundles"][precision] = str(rows[model]["bundles"][precision])

    method = (
        f"time.perf_counter around predict() (pre-processing, network, head) on one decoded test image of "
        f"each model's brick data, batch 1, 5 warm-up runs then {args.runs} timed rounds; each round times "
        f"all {len(detectors)} bundles once in a rotating order; threads = runtime default"
    )
    report = {
        "device": describe_device("openvino"),
        "method": method,
        "seconds": round(time.perf_counter() - started, 1),
        "textures": textures,
        "models": rows,
    }
    (args.workdir / "models.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


def _per_precision(row: dict, key: str, fmt: str) -> str:
    """fp32 / int8 values; a precision the model's recipe refused says so."""
    return " / ".join(fmt.format(row[key][p]) if p in row.get(key, {}) else "refused" for p in ("fp32", "int8"))


def _auroc(row: dict, texture: str) -> str:
    values = row["auroc"].get(texture)
    if not values or values["image"] is None:
        return "–"
    return f"{values['image']:.3f} / {values['pixel']:.3f}"


def markdown(report: dict) -> str:
    textures = report["textures"]
    head = (
        "| model | backbone | input | parameters | GFLOPs | train (brick) | "
        + " | ".join(f"AUROC {t} image / pixel" for t in textures)
        + " | x86 bundle image AUROC brick fp32 / int8 | x86 p50 fp32 / int8 | bundle fp32 / int8 |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for model, row in report["models"].items():
        channels, height, width = row["input"]
        backbone = row["backbone"].split(" (")[0]  # EfficientAD's says where its teacher came from
        lines.append(
            f"| {model} | {backbone} | {'grey' if channels == 1 else 'RGB'} {height}² | "
            f"{row['parameters'] / 1e6:.2f} M | {row['gflops']:.2f} | {row['train_seconds']:.0f} s"
            + (f" (+ {row['teacher_seconds']:.0f} s teacher)" if row.get("teacher_seconds") else "")
            + (" (teacher cached)" if row.get("teacher_seconds") == 0 else "")
            + " | "
            + " | ".join(_auroc(row, t) for t in textures)
            + f" | {_per_precision(row, 'bundle_image_auroc', '{:.3f}')}"
            + f" | {_per_precision(row, 'latency_p50_ms', '{:.1f} ms')}"
            + f" | {_per_precision(row, 'size_mb', '{:.1f} MB')} |"
        )
    device = report["device"]
    lines.append("")
    lines.append(
        f"{device['cpu']}, {device['usable_cores']} cores; latency: {report['method']}; "
        f"whole benchmark {report['seconds'] / 60:.1f} min."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
