"""Fitting thresholds and normalisation on held-out normal images of the exported model itself.

numpy only: the host's export and a device's re-fit use the same rule, stated in the manifest.
"""
from __future__ import annotations

import numpy as np

from edgekit.bundle import Decision
from edgekit.errors import EdgekitError

#: The pixel threshold is this quantile of all held-out normal anomaly-map values.
PIXEL_QUANTILE = 0.999
#: The image threshold is mean + K·std of held-out normal image scores.
IMAGE_SIGMAS = 3.0


def fit_decision(raw_scores: np.ndarray, raw_maps: np.ndarray) -> Decision:
    """Image threshold = mean + 3·std of normal scores; pixel threshold = 99.9th percentile of
    normal map values; centers = medians. Only normal images: no test image is ever used."""
    raw_scores = np.asarray(raw_scores, dtype=np.float64)
    if raw_scores.size < 2:
        raise EdgekitError("fitting a threshold needs at least 2 held-out normal images")
    image_center = float(np.median(raw_scores))
    image_threshold = float(raw_scores.mean() + IMAGE_SIGMAS * raw_scores.std(ddof=1))
    values = np.asarray(raw_maps, dtype=np.float64).ravel()
    return Decision(image_threshold=image_threshold, pixel_threshold=float(np.quantile(values, PIXEL_QUANTILE)),
                    image_center=image_center, pixel_center=float(np.median(values)),
                    method=f"image: mean+{IMAGE_SIGMAS:g}std of held-out normal scores; "
                           f"pixel: quantile {PIXEL_QUANTILE} of their map values; centers: medians",
                    fitted_on=int(raw_scores.size))
