"""The threshold rule: an upper prediction bound for a new normal image's score."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from edgekit.runtime.decision import IMAGE_ALPHA, fit_decision, prediction_bound_factor, student_t_quantile


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
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    decision = fit_decision(scores, np.linspace(0, 1, 4000).reshape(4, 1000))
    assert decision.image_threshold == pytest.approx(2.5 + prediction_bound_factor(4) * scores.std(ddof=1))
    assert decision.pixel_threshold == pytest.approx(0.999, abs=1e-3)
    assert decision.image_center == 2.5 and decision.fitted_on == 4
    assert "prediction bound" in decision.method
    with pytest.raises(EdgekitError, match="at least 2"):
        fit_decision(np.array([1.0]), np.zeros((1, 4)))
    assert not math.isnan(prediction_bound_factor(2))
