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
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from edgekit.bundle import Decision
from edgekit.errors import EdgekitError

#: The pixel threshold is this quantile of all held-out normal anomaly-map values.
PIXEL_QUANTILE = 0.999
#: One-sided false-alarm rate the image threshold aims at for a new normal image (that of 3σ).
IMAGE_ALPHA = 0.5 * math.erfc(3.0 / math.sqrt(2.0))
#: Fewest held-out normals the prediction bound is fitted on: its factor is 4.8σ at 8 and runs away
#: below (7.3σ at 5, 289σ at 2, where it can never fire).
MIN_HELD_OUT = 8
#: The rules a user may name (``--threshold-rule``); "fpr:<rate>" takes a false-alarm rate.
RULES = ("bound", "max", "fpr:<rate>", "f1")


@dataclass(frozen=True)
class ThresholdRule:
    """How the image threshold is set from validation scores.

    ``bound``: upper prediction bound of the normal scores (module docstring), ≥ ``MIN_HELD_OUT``
    normals. ``max``: the largest normal score; a new normal exceeds it with probability ≈ 1/(n+1).
    ``fpr:r``: the ⌈(n+1)(1−r)⌉-th smallest normal score, so a new normal exceeds it with
    probability ≤ r (conformal; needs n ≥ 1/r − 1). ``f1``: the threshold of best F1 over normals
    and labelled anomalies, half-way between the two scores it separates.
    """

    name: str
    rate: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "ThresholdRule":
        name, _, value = str(text).strip().partition(":")
        if name == "fpr":
            try:
                rate = float(value)
            except ValueError:
                rate = math.nan
            if not 0.0 < rate < 1.0:
                raise EdgekitError(
                    f"threshold rule fpr:<rate> needs a rate between 0 and 1, e.g. fpr:0.01, not {text!r}"
                )
            return cls("fpr", rate)
        if name in ("bound", "max", "f1") and not value:
            return cls(name)
        raise EdgekitError(f"threshold rule must be one of {', '.join(RULES)}, not {text!r}")

    @property
    def text(self) -> str:
        return f"fpr:{self.rate:g}" if self.name == "fpr" else self.name

    def _rank(self, normals: int) -> int:
        """fpr: which order statistic of ``normals`` scores bounds a new normal's false-alarm rate."""
        return math.ceil((normals + 1) * (1.0 - self.rate))

    def check(self, normals: int, anomalies: Optional[int] = None) -> None:
        """Refuse, saying what is missing, where this rule cannot set a threshold that can fire
        (``anomalies`` None: not known yet)."""
        if self.name == "bound" and normals < MIN_HELD_OUT:
            raise EdgekitError(
                f"the default threshold rule (prediction bound) needs at least {MIN_HELD_OUT} held-out normal "
                f"images, got {normals}: give more normal images or a larger --holdout, or choose "
                f"--threshold-rule max (a new normal exceeds it with probability about 1/{normals + 1})"
            )
        if self.name == "fpr" and self._rank(normals) > normals:
            raise EdgekitError(
                f"threshold rule {self.text} needs at least {math.ceil(1.0 / self.rate) - 1} normal images to keep "
                f"false alarms at or below {self.rate:g}; got {normals}"
            )
        if self.name == "f1" and anomalies is not None and anomalies < 1:
            raise EdgekitError(
                "threshold rule f1 needs labelled anomalous images: use edgekit threshold BUNDLE --data DIR --rule f1"
            )

    def image_threshold(self, normal: np.ndarray, anomalous: np.ndarray) -> tuple[float, str]:
        """(threshold, how it was set in words); refuses (``check``) where it cannot fire."""
        n = normal.size
        self.check(n, anomalous.size)
        if self.name == "bound":
            factor = prediction_bound_factor(n)
            return float(normal.mean() + factor * normal.std(ddof=1)), (
                f"mean + t(1-{IMAGE_ALPHA:.5f}, n-1)*std*sqrt(1+1/n) of held-out normal scores "
                f"(upper prediction bound, one-sided 3-sigma tail)"
            )
        if self.name == "max":
            return float(
                normal.max()
            ), f"largest of {n} held-out normal scores (a new normal exceeds it w.p. ~1/{n + 1})"
        if self.name == "fpr":
            rank = self._rank(n)
            return float(np.sort(normal)[rank - 1]), (
                f"{rank}-th smallest of {n} normal scores: a new normal exceeds it w.p. <= {self.rate:g} (conformal)"
            )
        return _best_f1_threshold(normal, anomalous), (
            f"best F1 over {n} normal and {anomalous.size} anomalous validation scores, half-way between the two "
            f"scores it separates"
        )


def _best_f1_threshold(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """The threshold of best F1 (``score > t`` is anomalous); ties go to the higher threshold."""
    scores = np.concatenate([normal, anomalous])
    labels = np.concatenate([np.zeros(normal.size, bool), np.ones(anomalous.size, bool)])
    values = np.unique(scores)  # candidate t: just below each distinct score
    below = np.concatenate([[values[0] - 1.0], values[:-1]])
    best, best_f1 = values[0], -1.0
    for low, value in zip(below, values):
        predicted = scores >= value
        tp = int(np.sum(predicted & labels))
        f1 = 2 * tp / (int(predicted.sum()) + int(labels.sum()))
        if f1 >= best_f1:
            best, best_f1 = 0.5 * (low + value), f1
    return float(best)


def fit_decision(
    raw_scores: np.ndarray,
    raw_maps: np.ndarray,
    *,
    rule: "ThresholdRule | str" = "bound",
    anomalous_scores: Optional[np.ndarray] = None,
    fitted_with: Optional[dict[str, Any]] = None,
    validation: Optional[dict[str, Any]] = None,
) -> Decision:
    """Image threshold by ``rule`` (:class:`ThresholdRule`) from normal ``raw_scores`` (and, for
    f1, ``anomalous_scores``); pixel threshold = 99.9th percentile of the normals' map values;
    centers = medians of the normals. ``fitted_with`` names the runtime that scored them."""
    rule = rule if isinstance(rule, ThresholdRule) else ThresholdRule.parse(rule)
    raw_scores = np.asarray(raw_scores, dtype=np.float64)
    anomalous = np.asarray(anomalous_scores if anomalous_scores is not None else [], dtype=np.float64)
    if raw_scores.size < 2:
        raise EdgekitError("fitting a threshold needs at least 2 held-out normal images")
    image_threshold, how = rule.image_threshold(raw_scores, anomalous)
    values = np.asarray(raw_maps, dtype=np.float64).ravel()
    return Decision(
        image_threshold=image_threshold,
        pixel_threshold=float(np.quantile(values, PIXEL_QUANTILE)),
        image_center=float(np.median(raw_scores)),
        pixel_center=float(np.median(values)),
        method=f"image: {how}; pixel: quantile {PIXEL_QUANTILE} of their map values; centers: medians",
        fitted_on=int(raw_scores.size),
        rule=rule.text,
        fitted_with=dict(fitted_with or {}),
        validation=dict(validation or {}),
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
