"""edgekit's coreset selection vs anomalib 2.7's ``KCenterGreedy``, side by side on the same features.

The features are PatchCore's Lite0 embeddings (blocks 2 and 4, 3×3 pooled, 152 dims) of all 60
training images of the embedded default brick data at 256² (60 × 32 × 32 = 61,440 patches); both
select 10 % of them. Reported per method: wall-clock seconds (``time.perf_counter``, one run each,
in this one process, one after the other), and the coverage radius — the largest distance from
any training patch to its nearest selected patch (exact, in the full 152 dimensions). The two
selections are seeded (edgekit: ``seed``; anomalib: ``torch.manual_seed``), so a re-run repeats them.

Run: ``python benchmarks/coreset_vs_anomalib.py`` (needs edgekit[train]; about 4 minutes here).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def training_features(workdir: Path, texture: str, size: int) -> np.ndarray:
    """(N·h·w, D) Lite0 patch features of every training image of the synthetic ``texture``."""
    from edgekit.data.datasets import open_dataset
    from edgekit.data.synth import synthesize
    from edgekit.families.patchcore.train import build_network
    from edgekit.train.backbones import DEFAULT_BACKBONE, get_backbone_spec
    from edgekit.train.inputs import embed, input_spec_for

    (category,) = synthesize(workdir / "data", texture=texture, size=size, seed=0, overwrite=True)
    dataset = open_dataset(category)
    config = {"backbone": DEFAULT_BACKBONE, "layers": list(get_backbone_spec(DEFAULT_BACKBONE).patchcore_layers)}
    embeddings = embed(build_network(config), [s.path for s in dataset.train], input_spec_for(DEFAULT_BACKBONE, size))
    return np.ascontiguousarray(embeddings.transpose(0, 2, 3, 1).reshape(-1, embeddings.shape[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texture", default="brick", choices=["brick", "grass", "gravel"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # anomalib's progress bar would interleave with the table

    import torch
    from anomalib import __version__ as anomalib_version
    from anomalib.models.components.sampling import KCenterGreedy

    from edgekit.compress.coreset import coreset_count, coreset_indices, coverage_radius

    with tempfile.TemporaryDirectory(prefix="edgekit-coreset-bench-") as tmp:
        features = training_features(Path(tmp), args.texture, args.size)
    count = coreset_count(len(features), args.ratio)

    torch.manual_seed(args.seed)
    started = time.perf_counter()
    theirs = KCenterGreedy(embedding=torch.from_numpy(features), sampling_ratio=args.ratio).select_coreset_idxs()
    their_seconds = time.perf_counter() - started

    started = time.perf_counter()
    ours = coreset_indices(features, count, seed=args.seed)
    our_seconds = time.perf_counter() - started

    their_radius = coverage_radius(features, np.asarray(theirs))
    our_radius = coverage_radius(features, ours)
    print(f"$ python benchmarks/{Path(__file__).name} " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(
        f"features: {len(features):,} x {features.shape[1]} (tf_efficientnet_lite0 blocks 2+4, {args.texture}, "
        f"{len(features) // 1024} images at {args.size}²); selecting {args.ratio:.0%} = {count:,} rows"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"anomalib {anomalib_version}"
    )
    print("timing: time.perf_counter around one selection each, same process, anomalib first\n")
    print("| method | rows | seconds | coverage radius |")
    print("|---|---:|---:|---:|")
    print(
        f"| anomalib KCenterGreedy (sparse random projection eps=0.9, torch) | {len(theirs):,} | "
        f"{their_seconds:.1f} | {their_radius:.3f} |"
    )
    print(
        f"| edgekit coreset_indices (Gaussian projection to 128, numpy) | {len(ours):,} | "
        f"{our_seconds:.1f} | {our_radius:.3f} |"
    )
    print(
        f"\nedgekit is {their_seconds / our_seconds:.0f}x faster; its coverage radius is "
        f"{our_radius / their_radius:.3f} x anomalib's ({(our_radius / their_radius - 1) * 100:+.1f} %; "
        "lower is better, the requirement is within +5 %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
