"""The threshold rule: an upper prediction bound for a new normal image's score."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from edgekit.runtime.decision import (
    IMAGE_ALPHA,
    ThresholdRule,
    fit_decision,
    prediction_bound_factor,
    student_t_quantile,
)


@pytest.mark.parametrize("df", [1, 2, 5, 11, 49, 1000])
@pytest.mark.parametrize("p", [0.5, 0.9, 0.99, 1 - IMAGE_ALPHA])
def test_student_t_quantile_matches_scipy(df, p):
    stats = pytest.importorskip("scipy.stats")
    assert student_t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9, abs=1e-12)


def test_the_bound_widens_for_small_hold_outs_and_tends_to_three_sigma():
    assert IMAGE_ALPHA == pytest.approx(0.0013499, rel=1e-4)
    assert prediction_bound_factor(12) == pytest.approx(4.007, abs=1e-3)
    factors = [prediction_bound_factor(n) for n in (5, 12, 50, 500, 50_000)]
    assert all(a > b for a, b in zip(factors, factors[1:]))
    assert factors[-1] == pytest.approx(3.0, abs=2e-3)


def test_a_new_normal_image_exceeds_the_threshold_at_the_stated_rate():
    """Monte Carlo: Gaussian normal scores, 12 held out, one new score; mean+3·std would alarm ~4x as often."""
    rng = np.random.default_rng(0)
    trials, n = 400_000, 12
    held = rng.normal(size=(trials, n))
    new = rng.normal(size=trials)
    spread = held.std(axis=1, ddof=1)
    bound_rate = np.mean(new > held.mean(axis=1) + prediction_bound_factor(n) * spread)
    naive_rate = np.mean(new > held.mean(axis=1) + 3.0 * spread)
    assert bound_rate == pytest.approx(IMAGE_ALPHA, rel=0.15)  # ±4 standard errors at 540 expected hits
    assert naive_rate > 3 * IMAGE_ALPHA


def test_fit_decision_states_its_rule_and_needs_two_images():
    scores = np.arange(1.0, 9.0)
    decision = fit_decision(scores, np.linspace(0, 1, 8000).reshape(8, 1000))
    assert decision.image_threshold == pytest.approx(4.5 + prediction_bound_factor(8) * scores.std(ddof=1))
    assert decision.pixel_threshold == pytest.approx(0.999, abs=1e-3)
    assert decision.image_center == 4.5 and decision.fitted_on == 8 and decision.rule == "bound"
    assert "prediction bound" in decision.method
    with pytest.raises(EdgekitError, match="at least 2"):
        fit_decision(np.array([1.0]), np.zeros((1, 4)))
    assert not math.isnan(prediction_bound_factor(2))


def test_the_bound_refuses_a_hold_out_too_small_to_fire_and_names_the_way_out():
    """2 held-out normals put the bound 289 standard deviations up: refused, with max offered."""
    with pytest.raises(EdgekitError, match=r"needs at least 8 held-out normal images, got 7: .*--threshold-rule max"):
        fit_decision(np.arange(7.0), np.zeros((7, 4)))
    assert prediction_bound_factor(2) > 200 and prediction_bound_factor(8) < 5
    decision = fit_decision(np.array([3.0, 1.0, 2.0]), np.zeros((3, 4)), rule="max")
    assert decision.image_threshold == 3.0 and decision.rule == "max" and "largest of 3" in decision.method


def test_fpr_rule_is_the_conformal_order_statistic_and_refuses_too_few_normals():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=199)
    decision = fit_decision(normal, np.zeros((199, 4)), rule="fpr:0.05")
    assert decision.image_threshold == np.sort(normal)[math.ceil(200 * 0.95) - 1]
    exceed = []  # a new normal's chance to exceed it, averaged over 2,000 hold-outs: the rate asked for
    for _ in range(2000):
        threshold = fit_decision(rng.normal(size=199), np.zeros((199, 4)), rule="fpr:0.05").image_threshold
        exceed.append(0.5 * math.erfc(threshold / math.sqrt(2.0)))
    assert np.mean(exceed) == pytest.approx(0.05, abs=0.002)
    with pytest.raises(EdgekitError, match=r"fpr:0.01 needs at least 99 normal images .* got 50"):
        fit_decision(normal[:50], np.zeros((50, 4)), rule="fpr:0.01")


def test_f1_rule_separates_where_f1_is_best_and_needs_anomalies():
    normal = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    anomalous = np.array([5.0, 6.0, 7.0])
    decision = fit_decision(normal, np.zeros((5, 4)), rule="f1", anomalous_scores=anomalous)
    assert decision.image_threshold == 4.5  # F1 6/7 there; above 10 or below 4 it is lower
    with pytest.raises(EdgekitError, match="f1 needs labelled anomalous images"):
        fit_decision(normal, np.zeros((5, 4)), rule="f1")


@pytest.mark.parametrize("text", ["fpr", "fpr:0", "fpr:1.5", "fpr:x", "best", "max:3", ""])
def test_unknown_or_malformed_rules_are_one_line(text):
    with pytest.raises(EdgekitError, match="threshold rule"):
        ThresholdRule.parse(text)
