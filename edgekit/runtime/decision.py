"""Fitting thresholds and normalisation on held-out normal images of the exported model itself.

numpy only: the host's export and a device's re-fit use the same rule, stated in the manifest.

The image threshold is an upper prediction bound for the score of one *new* normal image, from
the held-out normal scores under a Gaussian model: mean + t(1-α, n-1)·s·√(1 + 1/n), with α the
one-sided tail of 3σ (0.135 %). Plain mean + 3·s treats the sample mean and std of a dozen
images as exact and so sits too low for small hold-outs: with 12 images the bound is 4.0·s above
the mean, with 50 it is 3.2·s, and it tends to 3·s as the hold-out grows.
"""

from __future__ import annotations

import math

import numpy as np

from edgekit.bundle import Decision
from edgekit.errors import EdgekitError

#: The pixel threshold is this quantile of all held-out normal anomaly-map values.
PIXEL_QUANTILE = 0.999
#: One-sided false-alarm rate the image threshold aims at for a new normal image (that of 3σ).
IMAGE_ALPHA = 0.5 * math.erfc(3.0 / math.sqrt(2.0))


def fit_decision(raw_scores: np.ndarray, raw_maps: np.ndarray) -> Decision:
    """Image threshold = upper prediction bound of normal scores (module docstring); pixel threshold
    = 99.9th percentile of normal map values; centers = medians. Only normal images are used."""
    raw_scores = np.asarray(raw_scores, dtype=np.float64)
    if raw_scores.size < 2:
        raise EdgekitError("fitting a threshold needs at least 2 held-out normal images")
    image_center = float(np.median(raw_scores))
    image_threshold = float(raw_scores.mean() + prediction_bound_factor(raw_scores.size) * raw_scores.std(ddof=1))
    values = np.asarray(raw_maps, dtype=np.float64).ravel()
    return Decision(
        image_threshold=image_threshold,
        pixel_threshold=float(np.quantile(values, PIXEL_QUANTILE)),
        image_center=image_center,
        pixel_center=float(np.median(values)),
        method=f"image: mean + t(1-{IMAGE_ALPHA:.5f}, n-1)*std*sqrt(1+1/n) of held-out normal scores "
        f"(upper prediction bound, one-sided 3-sigma tail); pixel: quantile {PIXEL_QUANTILE} "
        f"of their map values; centers: medians",
        fitted_on=int(raw_scores.size),
    )


def prediction_bound_factor(n: int, alpha: float = IMAGE_ALPHA) -> float:
    """k such that mean + k·s bounds one new draw with probability 1-α (Gaussian, n samples)."""
    return student_t_quantile(1.0 - alpha, n - 1) * math.sqrt(1.0 + 1.0 / n)


def student_t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t with ``df`` degrees of freedom, for 0.5 <= p < 1 (bisection on the CDF)."""
    if not 0.5 <= p < 1.0 or df < 1:
        raise ValueError(f"student_t_quantile needs 0.5 <= p < 1 and df >= 1, got p={p}, df={df}")
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def student_t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t: 1 - I_x(df/2, 1/2)/2 with x = df/(df + t²), for t >= 0."""
    if t < 0:
        return 1.0 - student_t_cdf(-t, df)
    x = df / (df + t * t)
    return 1.0 - 0.5 * _regularized_incomplete_beta(x, 0.5 * df, 0.5)


def _regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by its continued fraction (modified Lentz), using the symmetry for fast convergence."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _regularized_incomplete_beta(1.0 - x, b, a)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a
