"""``edgekit train --coreset-rows N``: a fixed memory bank instead of a share of the patches (so
greedy selection's work grows with the images, not their square), carried into the bundle for
``edgekit fit``."""

from __future__ import annotations

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
