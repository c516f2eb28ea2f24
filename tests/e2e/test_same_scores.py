"""Refactoring the training code must not move a single score: the training path's raw scores of
four brick test images for the families that train without gradient descent (so the figures do
not hang on float rounding through epochs), at seed 0 with every default.

Recorded on 2026-12-06 from the code before and after the one-skeleton refactor (issue 15); the
eight families' runs were byte-identical between the two (weights, arrays, run.json settings,
metrics). A change here is a behaviour change: say so, re-measure, and record the new values.
"""

from __future__ import annotations

import importlib

import pytest

pytestmark = pytest.mark.e2e

IMAGES = ("discolor/000.png", "good/005.png", "missing/000.png", "scratch/005.png")
RECORDED = {
    "patchcore": (47.7097, 30.7387, 59.827, 63.4682),
    "padim": (327.802, 197.201, 425.749, 381.203),
    "dfm": (12.3466, 7.12635, 14.1615, 18.0809),
}


@pytest.mark.parametrize("model", sorted(RECORDED))
def test_the_training_path_gives_the_recorded_scores(model, brick, patchcore_run, tmp_path):
    from edgekit.train.engine import train

    run = patchcore_run if model == "patchcore" else train(model, brick, tmp_path / model)
    module = importlib.import_module(f"edgekit.families.{model}.train")
    scores, _ = module.score_run(run, [brick / "test" / name for name in IMAGES])
    assert [float(s) for s in scores] == pytest.approx(RECORDED[model], rel=1e-4)
