"""``edgekit train --coreset-rows N``: a fixed memory bank instead of a share of the patches (so
greedy selection's work grows with the images, not their square), carried into the bundle for
``edgekit fit``; ``--coreset streamed``: the two-level selection against exact greedy."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


def test_a_fixed_bank_is_trained_recorded_and_exported(brick, tmp_path):
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run
    from edgekit.families.patchcore.train import train_patchcore

    run = train_patchcore(brick, tmp_path / "run", coreset_rows=500)
    assert run.config["bank_rows"] == 500 and run.config["coreset_rows"] == 500
    assert run.array("memory_bank").shape[0] == 500  # of 48 × 1024 patches; ratio 0.1 would keep 4,915
    bundle = export_run(run.path, tmp_path / "bundle", options=ExportOptions(precision="fp32"))
    assert bundle.manifest.head.params["coreset_rows"] == 500


def test_a_streamed_coreset_scores_like_exact_greedy_and_records_its_bound(brick, patchcore_run, tmp_path):
    import numpy as np

    from edgekit.families.patchcore.train import train_patchcore

    run = train_patchcore(brick, tmp_path / "run", coreset="streamed")
    selection = run.config["coreset_selection"]
    assert patchcore_run.config["coreset_selection"]["method"] == "exact"  # auto, 49,152 patches
    assert selection["method"] == "streamed" and selection["chunks"] == 6  # 49,152 patches in 8,192s
    bank, exact_bank = run.array("memory_bank"), patchcore_run.array("memory_bank")
    assert bank.shape == exact_bank.shape == (4915, 152)
    # same statistics (computed in parts either way), another bank: scores move, the ranking holds
    np.testing.assert_allclose(run.array("patch_mean"), patchcore_run.array("patch_mean"), rtol=1e-6, atol=1e-7)
    assert len({row.tobytes() for row in bank} & {row.tobytes() for row in exact_bank}) > 0.1 * len(bank)
    assert selection["radius_bound"] < 2 * patchcore_run.config["coreset_selection"]["radius"]  # 32.7 vs 19.6
    metrics, exact_metrics = (json.loads((r.path / "metrics.json").read_text()) for r in (run, patchcore_run))
    assert metrics["image_auroc"] >= exact_metrics["image_auroc"] - 0.01
    assert metrics["pixel_auroc"] >= exact_metrics["pixel_auroc"] - 0.01


def test_the_default_bank_stays_within_the_head_budget(brick, exported, tmp_path):
    from edgekit.export.pipeline import export_run
    from edgekit.families.patchcore.export import HEAD_FLOPS_SHARE
    from edgekit.families.patchcore.train import train_patchcore

    manifest = json.loads((exported("x86") / "manifest.json").read_text())
    demo = manifest["head"]["params"]["bank"]  # 4,915-row coreset: the byte share binds
    budget = demo["head_budget"]
    assert demo["rows"] == 975 < budget["rows"] and demo["settings"]["most"] == budget["rows"]
    assert budget["rows"] * 2 * 1024 * 152 <= HEAD_FLOPS_SHARE * budget["network_flops"]
    assert (budget["rows"] + 1) * 2 * 1024 * 152 > HEAD_FLOPS_SHARE * budget["network_flops"]
    run = train_patchcore(brick, tmp_path / "run", coreset_ratio=0.2)  # 9,830 rows: share alone keeps 1,950
    bank = export_run(run.path, tmp_path / "bundle").manifest.head.params["bank"]
    assert bank["coreset_rows"] == 9830 and bank["rows"] == budget["rows"]
