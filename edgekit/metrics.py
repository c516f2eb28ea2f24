"""Accuracy metrics for anomaly detection: image and pixel AUROC, PRO, F1 thresholds.

numpy only, because the device measures its own accuracy (``edgekit profile`` runs there).
AUROC is the Mann-Whitney statistic with mid-ranks: a tie between a normal and an anomalous
score counts one half. That equals the area under the ROC curve with tied scores drawn as one
diagonal segment, which is what ``sklearn.metrics.roc_auc_score`` reports. Everything is
sort-based (O(n log n) time, O(n) memory), so 60 masks of 256x256 pixels are cheap.

The decision rule everywhere in edgekit is ``score > threshold`` means anomalous.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from edgekit.errors import EdgekitError


def _binary(values: object, what: str) -> np.ndarray:
    """0/1 or bool values → a bool array; anything else is refused rather than guessed."""
    array = np.asarray(values)
    if array.dtype == bool:
        return array
    if array.size and not (np.issubdtype(array.dtype, np.number) and np.isin(array, (0, 1)).all()):
        raise EdgekitError(f"{what} must be 0/1 or bool (for 0/255 masks use mask > 0)")
    return array.astype(bool)


def _finite(values: object, what: str) -> np.ndarray:
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise EdgekitError(f"{what} must be real numbers, not {array.dtype}")
    if not np.isfinite(array).all():
        raise EdgekitError(f"{what} contain NaN or infinity")
    return array


def _labels_and_scores(labels: object, scores: object) -> tuple[np.ndarray, np.ndarray]:
    label_array = _binary(labels, "labels").ravel()
    score_array = _finite(scores, "scores").ravel()
    if label_array.shape != score_array.shape:
        raise EdgekitError(f"{label_array.size} labels but {score_array.size} scores")
    return label_array, score_array


def _masks_and_maps(masks: object, maps: object) -> tuple[np.ndarray, np.ndarray]:
    mask_array = _binary(masks, "masks")
    map_array = _finite(maps, "anomaly maps")
    if mask_array.ndim != 3 or mask_array.shape != map_array.shape:
        raise EdgekitError(
            f"masks and maps must both be (N, H, W) of one shape, not {mask_array.shape} and {map_array.shape}"
        )
    return mask_array, map_array


def _auroc(positive: np.ndarray, scores: np.ndarray, what: str) -> float:
    n_pos = int(np.count_nonzero(positive))
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise EdgekitError(f"AUROC needs both normal and anomalous {what}; only one class is present")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    group_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    del sorted_scores
    pos_per_group = np.add.reduceat(positive[order].astype(np.int64), group_starts)
    neg_per_group = np.diff(np.r_[group_starts, positive.size]) - pos_per_group
    neg_below = np.cumsum(neg_per_group) - neg_per_group
    # Twice the Mann-Whitney U in exact integers: each positive beats the negatives below its
    # tie group (2 halves each) and ties with the negatives inside it (1 half each).
    twice_u = int(np.sum(pos_per_group * (2 * neg_below + neg_per_group)))
    return twice_u / (2.0 * n_pos * n_neg)


def image_auroc(labels: object, scores: object) -> float:
    """Area under the ROC curve of image scores (labels 1 = anomalous), ties as halves."""
    label_array, score_array = _labels_and_scores(labels, scores)
    return _auroc(label_array, score_array, "images")


def pixel_auroc(masks: object, maps: object) -> float:
    """AUROC over every pixel of ``maps`` (N, H, W) against ground-truth ``masks`` (N, H, W)."""
    mask_array, map_array = _masks_and_maps(masks, maps)
    return _auroc(mask_array.ravel(), map_array.ravel(), "pixels")


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 8-connected regions of a 2-D bool mask: (int32 labels, region count).

    Background is 0; regions are numbered 1..n in raster order of their first pixel. Works on
    horizontal runs of pixels (a union-find over runs that touch in adjacent rows), so the cost
    follows the number of runs, not the number of pixels.
    """
    mask = _binary(mask, "mask")
    if mask.ndim != 2:
        raise EdgekitError(f"a mask must be 2-D, not {mask.shape}")
    height, width = mask.shape
    labels = np.zeros((height, width), dtype=np.int32)
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    run_rows, run_starts = np.nonzero(edges == 1)
    _, run_ends = np.nonzero(edges == -1)  # exclusive; row-major order pairs them with starts
    n_runs = run_rows.size
    if n_runs == 0:
        return labels, 0
    # Runs a (row r) and b (row r+1) touch with 8-connectivity iff start_a <= end_b and
    # start_b <= end_a. Keys with a row stride wider than any column keep the search in row r+1.
    stride = width + 2
    start_keys = run_rows * stride + run_starts
    end_keys = run_rows * stride + run_ends
    next_row = (run_rows + 1) * stride
    first = np.searchsorted(end_keys, next_row + run_starts, side="left")
    stop = np.searchsorted(start_keys, next_row + run_ends, side="right")
    counts = np.maximum(stop - first, 0)
    upper = np.repeat(np.arange(n_runs), counts)
    lower = np.repeat(first - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())

    parent = list(range(n_runs))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for a, b in zip(upper.tolist(), lower.tolist()):
        root_a, root_b = root(a), root(b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
    roots = np.array([root(node) for node in range(n_runs)])
    # Roots are each region's first run, and runs are in raster order: number them in that order.
    unique_roots, run_region = np.unique(roots, return_inverse=True)
    lengths = run_ends - run_starts
    pixel_offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    flat = np.repeat(run_rows * width + run_starts, lengths) + pixel_offsets
    labels.ravel()[flat] = np.repeat(run_region + 1, lengths)
    return labels, int(unique_roots.size)


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def pro_score(masks: object, maps: object, *, fpr_limit: float = 0.3, steps: Optional[int] = None) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to ``fpr_limit``.

    As in the MVTec AD paper: each 8-connected region of each ground-truth mask is one region;
    at a threshold t (pixels with map >= t are flagged), PRO(t) is the mean over all regions of
    the fraction of the region flagged, and FPR(t) is the fraction of all normal pixels flagged.
    Integration: the curve is evaluated exactly at every distinct map value (or, with
    ``steps``, at ``steps`` thresholds evenly spaced from the lowest to the highest map value),
    starts at (0, 0), is joined by straight lines (so ties are diagonals, as in AUROC), cut at
    ``fpr_limit`` by linear interpolation, integrated with the trapezoid rule and divided by
    ``fpr_limit`` so a perfect map scores 1.0.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise EdgekitError(f"fpr_limit must be in (0, 1], not {fpr_limit}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 2):
        raise EdgekitError(f"steps must be an integer >= 2 or None, not {steps!r}")
    mask_array, map_array = _masks_and_maps(masks, maps)
    weights = np.zeros(mask_array.shape, dtype=np.float64)
    n_regions = 0
    for index, mask in enumerate(mask_array):
        labels, count = connected_components(mask)
        if count:
            areas = np.bincount(labels.ravel())[1:]
            inside = labels > 0
            weights[index][inside] = 1.0 / areas[labels[inside] - 1]
            n_regions += count
    normal = ~mask_array.ravel()
    n_normal = int(np.count_nonzero(normal))
    if n_regions == 0 or n_normal == 0:
        raise EdgekitError("PRO needs at least one anomalous region and at least one normal pixel")

    scores = map_array.ravel()
    if steps is not None:
        thresholds = np.linspace(scores.min(), scores.max(), steps)
        scores = np.searchsorted(thresholds, scores, side="right")  # equal level = same fate
    order = np.argsort(scores, kind="stable")[::-1]
    sorted_scores = scores[order]
    group_ends = np.r_[np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), order.size - 1]
    del sorted_scores
    overlap = np.cumsum(weights.ravel()[order])[group_ends] / n_regions
    fpr = np.cumsum(normal[order])[group_ends] / n_normal
    fpr = np.r_[0.0, fpr]
    overlap = np.r_[0.0, np.minimum(overlap, 1.0)]

    cut = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:cut], overlap[:cut]
    if cut < fpr.size:  # fpr[cut - 1] <= limit < fpr[cut]: interpolate the point at the limit
        share = (fpr_limit - fpr[cut - 1]) / (fpr[cut] - fpr[cut - 1])
        x = np.r_[x, fpr_limit]
        y = np.r_[y, overlap[cut - 1] + share * (overlap[cut] - overlap[cut - 1])]
    return _trapezoid(x, y) / fpr_limit


def _f1_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct scores (descending) and the F1 of flagging every score >= each of them."""
    n_pos = int(np.count_nonzero(labels))
    if n_pos == 0:
        raise EdgekitError("F1 needs at least one anomalous label")
    order = np.argsort(scores, kind="stable")[::-1]
    sorted_scores = scores[order]
    group_ends = np.r_[np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), order.size - 1]
    true_pos = np.cumsum(labels[order])[group_ends]
    flagged = group_ends + 1
    return sorted_scores[group_ends], 2.0 * true_pos / (flagged + n_pos)


def f1_optimal_threshold(labels: object, scores: object) -> tuple[float, float]:
    """The threshold that maximises F1 under ``score > threshold`` means anomalous, and that F1.

    The best cut flags every score >= s_k for some distinct score s_k; the threshold returned
    is the midpoint between s_k and the next lower distinct score (when everything is flagged,
    the same half gap below the lowest score), so it classifies these scores the same way with a
    margin either side. When several cuts tie on F1, the one that flags fewest images wins.
    """
    label_array, score_array = _labels_and_scores(labels, scores)
    distinct, f1 = _f1_curve(label_array, score_array)
    best = int(np.argmax(f1))
    flagged_lowest = float(distinct[best])
    if best + 1 < distinct.size:
        below = float(distinct[best + 1])
        threshold = max(below + (flagged_lowest - below) / 2.0, below)
    elif best > 0:  # everything flagged: keep the same half-gap margin below the lowest score
        threshold = flagged_lowest - (float(distinct[best - 1]) - flagged_lowest) / 2.0
    else:
        threshold = flagged_lowest
    if not threshold < flagged_lowest:
        threshold = float(np.nextafter(flagged_lowest, -np.inf))
    return threshold, float(f1[best])


def f1_at_threshold(labels: object, scores: object, threshold: float) -> float:
    """F1 of the rule ``score > threshold`` means anomalous (labels 1 = anomalous)."""
    label_array, score_array = _labels_and_scores(labels, scores)
    n_pos = int(np.count_nonzero(label_array))
    if n_pos == 0:
        raise EdgekitError("F1 needs at least one anomalous label")
    flagged = score_array > threshold
    true_pos = int(np.count_nonzero(flagged & label_array))
    return 2.0 * true_pos / (int(np.count_nonzero(flagged)) + n_pos)
