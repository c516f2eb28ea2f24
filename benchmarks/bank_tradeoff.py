"""PatchCore bank compression trade-off on the embedded default data: size vs speed vs accuracy.

For each texture (brick, grass, gravel; ``edgekit.data.synth.synthesize``, seed 0) one PatchCore
run is trained with the defaults (tf_efficientnet_lite0, 152 dims, 10 % coreset of 48 images),
then exported for x86 (OpenVINO, fp32 network) once per bank variant:

* d ∈ {full, 256, 128, 64, 32} (PCA folded into the network; d > the feature width is skipped)
  × {float32, float16, int8}, every coreset row kept;
* int8 at full width thinned by coreset re-selection to fewer rows (``--bank-size``), and the
  export default (no --bank-* option).

Per variant: bank bytes (the head arrays, scales included) and how many times smaller than the
uncompressed bank (anomalib's default: the coreset, all dims, float32); kNN milliseconds per
image (``nearest_neighbors`` of one image's 1,024 patches against the bank, median); end-to-end
milliseconds per image (``Detector.predict`` on a decoded 256² image: pre-processing, the
network on its runtime, the head; median); image AUROC and pixel AUROC of the exported bundle on
each texture's 60 test images. Timings: ``time.perf_counter``, 2 warm-up + ``--runs`` timed
calls, batch 1, the x86 target's threads; averaged over the three textures.

A second table compares fitting PCA on all training patches with fitting it on the coreset
alone, a third re-selects the default bank with five seeds (how much thinning alone moves AUROC);
both by the training path (torch features + the same numpy compression, equal to the runtime to 1e-4).

Run: ``python benchmarks/bank_tradeoff.py [--workdir DIR]`` (needs edgekit[train]; ~30 min here).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

TEXTURES = ("brick", "grass", "gravel")
DIMS = ("full", "256", "128", "64", "32")
DTYPES = ("float32", "float16", "int8")
THINNED = (2000, 1500, 500)


@dataclass
class Variant:
    label: str
    dims: Optional[str] = None
    dtype: Optional[str] = None
    size: Optional[int] = None
    rows: list[int] = field(default_factory=list)
    bytes: list[int] = field(default_factory=list)
    ratio: list[float] = field(default_factory=list)
    knn_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)
    image_auroc: dict[str, float] = field(default_factory=dict)
    pixel_auroc: dict[str, float] = field(default_factory=dict)


def _median_ms(call, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _train(workdir: Path, texture: str):
    from edgekit.data.synth import synthesize
    from edgekit.families.patchcore.train import train_patchcore
    from edgekit.train.run import open_run

    run_dir = workdir / "runs" / texture
    if (run_dir / "run.json").is_file() and (run_dir / "patch_mean.npy").is_file():
        return open_run(run_dir), workdir / "data" / texture  # re-use a run of an earlier call
    (category,) = synthesize(workdir / "data", texture=texture, seed=0, overwrite=True)
    return train_patchcore(category, run_dir, overwrite=True), category


def _measure(variant: Variant, run, category: Path, workdir: Path, texture: str, runs: int) -> None:
    import edgekit
    from edgekit.data.datasets import open_dataset
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run
    from edgekit.fit import embed_images
    from edgekit.metrics import image_auroc, pixel_auroc
    from edgekit.preprocess import read_image
    from edgekit.runtime.bank import nearest_neighbors

    out = workdir / "bundles" / texture / variant.label.replace(" ", "_")
    options = ExportOptions(bank_dims=variant.dims, bank_dtype=variant.dtype, bank_size=variant.size)
    export_run(run.path, out, target="x86", options=options, overwrite=True)
    detector = edgekit.load(out)
    bank = detector.manifest.head.params["bank"]
    variant.rows.append(bank["rows"])
    variant.bytes.append(bank["bytes"])
    variant.ratio.append(bank["smaller_than_uncompressed"])
    dataset = open_dataset(category)
    embeddings = embed_images(detector, [s.path for s in dataset.test])
    scores, maps = detector.head(embeddings)
    labels = np.array([s.label for s in dataset.test])
    masks = np.stack([dataset.read_mask(s, maps.shape[1], maps.shape[2]) for s in dataset.test])
    variant.image_auroc[texture] = image_auroc(labels, scores)
    variant.pixel_auroc[texture] = pixel_auroc(masks, maps)
    patches = [e.transpose(1, 2, 0).reshape(-1, e.shape[0]) for e in embeddings[:runs]]
    cycle = iter(range(10**9))
    variant.knn_ms.append(
        _median_ms(lambda: nearest_neighbors(patches[next(cycle) % len(patches)], detector.head.memory_bank), runs)
    )
    image = read_image(dataset.test[0].path, detector.manifest.input.channels)
    variant.e2e_ms.append(_median_ms(lambda: detector.predict(image), runs))
    shutil.rmtree(out, ignore_errors=True)


def _training_path_rows(run, category: Path, texture: str, pca_sources: dict, seeds: dict) -> None:
    """Image AUROC by the training path (torch features + the same numpy compression, which the
    runtime equals to 1e-4): PCA fitted on all training patches vs on the coreset; and the
    default bank re-selected with other seeds, to show how much thinning alone moves AUROC."""
    from edgekit.compress.pca import DEFAULT_BANK, BankSettings, compress_bank
    from edgekit.data.datasets import open_dataset
    from edgekit.families.patchcore.train import compressed_bank, head_for, load_network
    from edgekit.metrics import image_auroc
    from edgekit.runtime.bank import decode_bank
    from edgekit.runtime.heads import KnnHead
    from edgekit.train.inputs import embed, input_spec_for
    from edgekit.train.run import open_run

    dataset = open_dataset(category)
    config = run.config
    embeddings = embed(
        load_network(run), [s.path for s in dataset.test], input_spec_for(config["backbone"], config["image_size"])
    )
    labels = np.array([s.label for s in dataset.test])
    with tempfile.TemporaryDirectory() as tmp:
        coreset_only = Path(tmp) / "run"
        shutil.copytree(run.path, coreset_only, ignore=shutil.ignore_patterns("patch_*.npy"))
        for source, source_run in (("all training patches", run), ("coreset only", open_run(coreset_only))):
            for dims in ("64", "32"):
                compressed = compressed_bank(source_run, BankSettings(dims=dims, dtype="int8"))
                scores, _ = head_for(source_run, compressed)(compressed.pca.project_maps(embeddings))
                pca_sources.setdefault((dims, source), {})[texture] = image_auroc(labels, scores)
    bank = run.array("memory_bank")
    rows = DEFAULT_BANK.rows(len(bank), bank.shape[1], bank.shape[1])
    for seed in range(5):
        compressed = compress_bank(bank, dtype=DEFAULT_BANK.dtype, size=rows, seed=seed)
        head = KnnHead(
            memory_bank=decode_bank(compressed.arrays, DEFAULT_BANK.dtype),
            num_neighbors=int(config["num_neighbors"]),
            output_height=config["image_size"],
            output_width=config["image_size"],
        )
        seeds.setdefault(texture, []).append(image_auroc(labels, head(embeddings)[0]))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="Keep data, runs and bundles here (re-used).")
    parser.add_argument("--runs", type=int, default=10, help="Timed calls per measurement.")
    args = parser.parse_args(argv)
    import openvino

    from edgekit.compress.pca import DEFAULT_BANK

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgekit-bank-tradeoff-"))
    variants: list[Variant] = []
    skipped: list[str] = []
    pca_sources: dict = {}
    seeds: dict = {}
    feature_dims = None
    for texture in TEXTURES:
        run, category = _train(workdir, texture)
        feature_dims = int(run.config["feature_dims"])
        if not variants:
            for dims in DIMS:
                if dims != "full" and int(dims) >= feature_dims:
                    skipped.append(dims)
                    continue
                variants += [Variant(f"d={dims} {dtype}", dims=dims, dtype=dtype) for dtype in DTYPES]
            default_rows = DEFAULT_BANK.rows(int(run.config["bank_rows"]), feature_dims, feature_dims)
            variants += [
                Variant(f"d=full int8 {size} rows", dims="full", dtype="int8", size=size)
                for size in THINNED
                if size < int(run.config["bank_rows"])
            ]
            variants.append(Variant(f"default (d=full int8, {default_rows} rows)"))
        for variant in variants:
            print(f"[{texture}] {variant.label}", file=sys.stderr, flush=True)
            _measure(variant, run, category, workdir, texture, args.runs)
        _training_path_rows(run, category, texture, pca_sources, seeds)

    reference = variants[0]  # d=full float32: the uncompressed bank
    mean = lambda values: float(np.mean(list(values)))  # noqa: E731
    print(
        "$ python benchmarks/bank_tradeoff.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; OpenVINO "
        f"{openvino.__version__}, numpy {np.__version__}; x86 target, fp32 network; timings: perf_counter, "
        f"median of {args.runs} after 2 warm-up, batch 1, mean over {len(TEXTURES)} textures"
    )
    print(
        f"features: tf_efficientnet_lite0, {feature_dims} dims; uncompressed bank: "
        f"{reference.rows[0]} rows x {feature_dims} x float32 = {reference.bytes[0] / 1e6:.2f} MB; "
        + (f"skipped d={', '.join(skipped)} (more than the {feature_dims} feature dims)" if skipped else "")
    )
    print()
    print(
        f"| bank | rows | bank KB | x smaller | kNN ms/img | end-to-end ms/img | image AUROC {' / '.join(TEXTURES)} "
        "| mean | Δ mean | pixel AUROC mean |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    ref_mean = mean(reference.image_auroc.values())
    for v in variants:
        per = " / ".join(f"{v.image_auroc[t]:.4f}" for t in TEXTURES)
        image_mean = mean(v.image_auroc.values())
        print(
            f"| {v.label} | {round(mean(v.rows))} | {mean(v.bytes) / 1e3:.1f} | {mean(v.ratio):.1f} | "
            f"{mean(v.knn_ms):.1f} | {mean(v.e2e_ms):.1f} | {per} | {image_mean:.4f} | "
            f"{image_mean - ref_mean:+.4f} | {mean(v.pixel_auroc.values()):.4f} |"
        )
    qualifying = [v for v in variants if mean(v.ratio) >= 20 and mean(v.image_auroc.values()) - ref_mean >= -0.005]
    print(
        "\nrule (>= 20x smaller, mean image AUROC drop <= 0.005): "
        + (", ".join(v.label for v in qualifying) if qualifying else "no variant qualifies")
    )
    print("\nPCA fitted on all training patches vs on the coreset alone (image AUROC, int8, training path):\n")
    print(f"| d | PCA fitted on | {' | '.join(TEXTURES)} | mean |")
    print("|---:|---|" + "---:|" * (len(TEXTURES) + 1))
    for (dims, source), values in sorted(pca_sources.items(), key=lambda item: (-int(item[0][0]), item[0][1])):
        print(
            f"| {dims} | {source} | "
            + " | ".join(f"{values[t]:.4f}" for t in TEXTURES)
            + f" | {mean(values.values()):.4f} |"
        )
    print("\nThe default bank re-selected with seeds 0-4 (image AUROC, training path; seed 0 is the export's):\n")
    print("| texture | uncompressed | seeds 0 / 1 / 2 / 3 / 4 | mean ± std | Δ mean |")
    print("|---|---:|---|---:|---:|")
    for texture in TEXTURES:
        values, base = seeds[texture], reference.image_auroc[texture]
        print(
            f"| {texture} | {base:.4f} | "
            + " / ".join(f"{v:.4f}" for v in values)
            + f" | {np.mean(values):.4f} ± {np.std(values):.4f} | {np.mean(values) - base:+.4f} |"
        )
    overall = np.mean([np.mean(seeds[t]) for t in TEXTURES]) - ref_mean
    print(f"| mean over textures | {ref_mean:.4f} | | | {overall:+.4f} |")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
