"""PCA banks with and without the residual-energy coordinate, against full width, at equal bytes.

    python3 benchmarks/pca_residual.py [--workdir DIR] [--dims 128,64,32,16]

For each texture (brick, grass, gravel; seed 0, 256², 48 training images) one PatchCore run with
the defaults (reused from an earlier call in the same work folder). Every bank is int8 and
thinned by coreset re-selection to the most rows within 1/20 of the uncompressed bank's bytes
(the export default's rule), so rows trade against dimensions at equal size; ``all rows`` keeps
the whole coreset to isolate what the projection alone costs. Scores by the training path (torch
features, the same numpy compression and kNN head; the runtime equals it to 1e-4, tested), on
each texture's 60 test images. Head MFLOPs: 2 · patches · rows · dims per image, what the device
pays. No timings: this is about accuracy per byte.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

TEXTURES = ("brick", "grass", "gravel")


def _run(workdir: Path, texture: str):
    from edgekit.data.synth import synthesize
    from edgekit.families.patchcore.train import train_patchcore
    from edgekit.train.run import open_run

    run_dir = workdir / "runs" / texture
    category = workdir / "data" / texture
    if (run_dir / "run.json").is_file():
        return open_run(run_dir), category
    synthesize(workdir / "data", texture=texture, seed=0, overwrite=True)
    return train_patchcore(category, run_dir, overwrite=True), category


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edgekit-pca-residual"))
    parser.add_argument("--dims", default="128,64,32,16")
    args = parser.parse_args(argv)
    from edgekit.compress.pca import DEFAULT_BANK, UNCOMPRESSED, BankSettings
    from edgekit.data.datasets import open_dataset
    from edgekit.families.patchcore.train import compressed_bank, head_for, load_network
    from edgekit.metrics import image_auroc, pixel_auroc
    from edgekit.train.inputs import embed, input_spec_for

    dims = args.dims.split(",")
    variants = [
        ("uncompressed (full float32, all rows)", UNCOMPRESSED),
        ("export default (full int8, 1/20)", DEFAULT_BANK),
    ]
    for d in dims:
        variants.append((f"d={d} int8, 1/20", BankSettings(dims=d, dtype="int8", share=0.05)))
        variants.append((f"d={d}+r int8, 1/20", BankSettings(dims=f"{d}+r", dtype="int8", share=0.05)))
    for d in dims:
        variants.append((f"d={d} int8, all rows", BankSettings(dims=d, dtype="int8")))
        variants.append((f"d={d}+r int8, all rows", BankSettings(dims=f"{d}+r", dtype="int8")))
    results: dict[str, dict] = {label: {"image": {}, "pixel": {}} for label, _ in variants}
    for texture in TEXTURES:
        run, category = _run(args.workdir, texture)
        dataset = open_dataset(category)
        config = run.config
        embeddings = embed(
            load_network(run), [s.path for s in dataset.test], input_spec_for(config["backbone"], config["image_size"])
        )
        labels = np.array([s.label for s in dataset.test])
        size = config["image_size"]
        masks = np.stack([dataset.read_mask(s, size, size) for s in dataset.test])
        for label, settings in variants:
            compressed = compressed_bank(run, settings)
            inputs = compressed.pca.project_maps(embeddings) if compressed.pca is not None else embeddings
            scores, maps = head_for(run, compressed)(inputs)
            entry = results[label]
            entry["image"][texture] = image_auroc(labels, scores)
            entry["pixel"][texture] = pixel_auroc(masks, maps)
            entry["rows"], entry["dims"] = compressed.description["rows"], compressed.description["dims"]
            entry["bytes"], entry["ratio"] = compressed.nbytes, compressed.description.get("smaller_than_uncompressed")
            entry["uncompressed"] = int(config["bank_rows"]) * int(config["feature_dims"]) * 4
            entry["patches"] = embeddings.shape[2] * embeddings.shape[3]
            print(f"[{texture}] {label}: {entry['image'][texture]:.4f}", file=sys.stderr, flush=True)
    reference = np.mean(list(results[variants[0][0]]["image"].values()))
    print("$ python3 benchmarks/pca_residual.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])))
    print()
    print(
        f"| bank | rows × dims | KB | × smaller | head MFLOPs/img | image AUROC {' / '.join(TEXTURES)} | mean "
        "| Δ mean | pixel AUROC mean |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    qualifying = []
    for label, _ in variants:
        e = results[label]
        mean = float(np.mean(list(e["image"].values())))
        smaller = e["uncompressed"] / e["bytes"]
        mflops = 2 * e["patches"] * e["rows"] * e["dims"] / 1e6
        per_texture = " / ".join(f"{e['image'][t]:.4f}" for t in TEXTURES)
        print(
            f"| {label} | {e['rows']} × {e['dims']} | {e['bytes'] / 1e3:.1f} | {smaller:.1f} | {mflops:.0f} "
            f"| {per_texture} | {mean:.4f} | {mean - reference:+.4f} "
            f"| {np.mean(list(e['pixel'].values())):.4f} |"
        )
        if smaller >= 20 and mean - reference >= -0.005:
            qualifying.append(label)
    print("\n>= 20x smaller with mean image AUROC within 0.005: " + (", ".join(qualifying) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
