"""The image-threshold rules on the three textures: false alarms, misses, F1, fp32 vs int8 decisions.

    python3 benchmarks/thresholds.py [--workdir DIR] [--textures brick,grass,gravel]

For each texture (seed 0): synthesize, train PatchCore (Lite0), export x86 fp32 and int8, score
the held-out normals and the test split with each bundle, and fit the image threshold on each
bundle's own scores by every rule, through ``fit_decision`` (the code export, fit and
``edgekit threshold`` run):

- ``mean+3std``: mean + 3·s, the rule edgekit used before (held-out normals);
- ``bound``: mean + t(1-α, n-1)·s·√(1+1/n), α = 0.135 % (the default; held-out normals);
- ``max``: the largest held-out normal score; ``fpr:0.1``: conformal, false alarms ≤ 10 %;
- ``f1 (k)``: best F1 over the held-out normals and k = 5, 10, 20 labelled validation anomalies.
  They come from the same texture synthesized with seed 1 (other crops, other painted defects),
  never from the test split.

Printed per texture and rule: test normals flagged and anomalies missed by fp32, F1 of fp32 and
int8, and how many test decisions int8 and fp32 share; a rule that refuses says why.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekit.data.datasets import open_dataset  # noqa: E402
from edgekit.errors import EdgekitError  # noqa: E402
from edgekit.metrics import f1_at_threshold  # noqa: E402
from edgekit.runtime.decision import fit_decision  # noqa: E402
from edgekit.runtime.detector import load  # noqa: E402
from edgekit.train.run import open_run  # noqa: E402

RULES = ("mean+3std", "bound", "max", "fpr:0.1", "fpr:0.05", "f1 (5)", "f1 (10)", "f1 (20)")


def _threshold(rule: str, held: np.ndarray, anomalies: np.ndarray) -> float:
    """The image threshold ``rule`` sets from held-out normal scores (and validation anomalies)."""
    if rule == "mean+3std":
        return float(held.mean() + 3.0 * held.std(ddof=1))
    if rule.startswith("f1"):
        count = int(rule[4:-1])
        return fit_decision(
            held, np.zeros((held.size, 1)), rule="f1", anomalous_scores=anomalies[:count]
        ).image_threshold
    return fit_decision(held, np.zeros((held.size, 1)), rule=rule).image_threshold


def _validation_anomalies(workdir: Path, texture: str) -> list[Path]:
    """20 painted defects of the texture synthesized with another seed: never a test image."""
    from edgekit.data.synth import synthesize

    (category,) = synthesize(workdir / texture / "validation", texture=texture, seed=1, overwrite=True)
    anomalies = [s.path for s in open_dataset(category).test if s.label == 1]
    order = np.random.default_rng(0).permutation(len(anomalies))  # every defect kind among the first k
    return [anomalies[i] for i in order[:20]]


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
        "| texture | rule | test normals flagged (fp32) | anomalies missed (fp32) | F1 fp32 | F1 int8 | int8 decides as fp32 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for texture in args.textures.split(","):
        run_dir, bundles = _prepare(workdir, texture)
        run = open_run(run_dir)
        dataset = open_dataset(Path(run.config["dataset"]["path"]))
        held_out = [Path(p) for p in run.config["holdout_images"]]
        validation = _validation_anomalies(workdir, texture)
        labels = np.array([s.label for s in dataset.test])
        test, held, anomalous = {}, {}, {}
        for precision, path in bundles.items():
            detector = load(path)
            test[precision] = detector.raw([s.path for s in dataset.test])[0]
            held[precision] = detector.raw(held_out)[0]
            anomalous[precision] = detector.raw(validation)[0]
        for rule in RULES:
            try:
                threshold = {p: _threshold(rule, held[p], anomalous[p]) for p in bundles}
            except EdgekitError as refused:
                print(f"| {texture} | {rule} | refused: {refused} | | | | |")
                continue
            decided = {p: test[p] > threshold[p] for p in bundles}
            agree = int(np.sum(decided["fp32"] == decided["int8"]))
            print(
                f"| {texture} | {rule} | {int(decided['fp32'][labels == 0].sum())} / {int((labels == 0).sum())} | "
                f"{int((~decided['fp32'][labels == 1]).sum())} / {int(labels.sum())} | "
                f"{f1_at_threshold(labels, test['fp32'], threshold['fp32']):.3f} | "
                f"{f1_at_threshold(labels, test['int8'], threshold['int8']):.3f} | "
                f"{agree}/{len(labels)} ({100 * agree / len(labels):.1f} %) |"
            )
    print(f"\nheld-out normals per run: {len(held_out)}; x86 OpenVINO, f32 hint; data and runs in {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
