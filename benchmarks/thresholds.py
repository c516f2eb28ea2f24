"""The image-threshold rule, old and new, on the three textures: fp32 vs int8 decisions and F1.

    python3 benchmarks/thresholds.py [--workdir DIR]

For each texture (seed 0): synthesize, train PatchCore (Lite0), export x86 fp32 and int8, score
the held-out normals and the test split with each bundle, and fit the image threshold two ways
on each bundle's own held-out scores:

- ``mean+3std``: mean + 3·s, the rule edgekit used before;
- ``prediction bound``: mean + t(1-α, n-1)·s·√(1+1/n), α = 0.135 % (edgekit's rule now).

Printed per texture and rule: the threshold over the held-out mean, test normals flagged by fp32,
anomalies missed by fp32, F1 of fp32 and int8, and how many test decisions int8 and fp32 share.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekit.data.datasets import open_dataset  # noqa: E402
from edgekit.metrics import f1_at_threshold  # noqa: E402
from edgekit.runtime.decision import prediction_bound_factor  # noqa: E402
from edgekit.runtime.detector import load  # noqa: E402
from edgekit.train.run import open_run  # noqa: E402

RULES = {"mean+3std": lambda n: 3.0, "prediction bound": prediction_bound_factor}


def _prepare(workdir: Path, texture: str) -> tuple[Path, dict[str, Path]]:
    from edgekit.data.synth import synthesize
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run
    from edgekit.families.patchcore.train import train_patchcore

    bundles = {precision: workdir / texture / precision for precision in ("fp32", "int8")}
    if all((path / "manifest.json").is_file() for path in bundles.values()):  # a kept --workdir: reuse
        return workdir / texture / "run", bundles
    (category,) = synthesize(workdir / texture / "data", texture=texture, seed=0, overwrite=True)
    run = train_patchcore(category, workdir / texture / "run", overwrite=True)
    for precision in ("fp32", "int8"):
        export_run(
            run.path, bundles[precision], target="x86", options=ExportOptions(precision=precision), overwrite=True
        )
    return run.path, bundles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="Keep data, runs and bundles here.")
    parser.add_argument("--textures", default="brick,grass,gravel")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgekit-thresholds-"))
    print(
        f"{'texture':<8} {'rule':<17} {'k':>5} {'normals flagged':>15} {'anomalies missed':>16} "
        f"{'F1 fp32':>8} {'F1 int8':>8} {'int8 = fp32':>12}"
    )
    for texture in args.textures.split(","):
        run_dir, bundles = _prepare(workdir, texture)
        run = open_run(run_dir)
        dataset = open_dataset(Path(run.config["dataset"]["path"]))
        held_out = [Path(p) for p in run.config["holdout_images"]]
        labels = np.array([s.label for s in dataset.test])
        test, held = {}, {}
        for precision, path in bundles.items():
            detector = load(path)
            test[precision] = detector.raw([s.path for s in dataset.test])[0]
            held[precision] = detector.raw(held_out)[0]
        for rule, factor in RULES.items():
            k = factor(len(held_out))
            threshold = {p: held[p].mean() + k * held[p].std(ddof=1) for p in bundles}
            decided = {p: test[p] > threshold[p] for p in bundles}
            agree = int(np.sum(decided["fp32"] == decided["int8"]))
            print(
                f"{texture:<8} {rule:<17} {k:>5.2f} {int(decided['fp32'][labels == 0].sum()):>11} / "
                f"{int((labels == 0).sum())} {int((~decided['fp32'][labels == 1]).sum()):>12} / "
                f"{int(labels.sum())} {f1_at_threshold(labels, test['fp32'], threshold['fp32']):>8.4f} "
                f"{f1_at_threshold(labels, test['int8'], threshold['int8']):>8.4f} "
                f"{agree:>5}/{len(labels)} {100 * agree / len(labels):5.1f}%"
            )
    print(f"held-out normals per run: {len(held_out)}; x86 OpenVINO, f32 hint; data and runs in {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
