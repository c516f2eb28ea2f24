"""Metrics agree with sklearn (AUROC, F1) and with hand-computed PRO values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score

from edgekit.errors import EdgekitError
from edgekit.metrics import (
    connected_components,
    f1_at_threshold,
    f1_optimal_threshold,
    image_auroc,
    pixel_auroc,
    pro_score,
)


def _tied_scores(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 2, size)
    scores = np.round(rng.normal(labels * 0.7, 1.0, size), 1)  # rounding makes many ties
    return labels, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_auroc_matches_sklearn_with_ties(seed: int) -> None:
    labels, scores = _tied_scores(np.random.default_rng(seed), 300)
    assert len(np.unique(scores)) < 100
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_image_auroc_counts_a_tie_as_one_half() -> None:
    assert image_auroc([0, 1], [0.5, 0.5]) == 0.5
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.9]) == 0.875
    assert image_auroc([1, 0], [0.0, 1.0]) == 0.0


def test_image_auroc_refuses_one_class_nan_and_length_mismatch() -> None:
    with pytest.raises(EdgekitError, match="only one class"):
        image_auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(EdgekitError, match="NaN"):
        image_auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(EdgekitError, match="3 labels but 2 scores"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(EdgekitError, match="0/1"):
        image_auroc([0, 2], [0.1, 0.2])


def test_pixel_auroc_matches_sklearn_over_all_pixels() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((4, 16, 12)) > 0.8
    maps = np.round(rng.normal(masks * 0.5, 1.0), 1).astype(np.float32)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_handles_sixty_256_pixel_maps() -> None:
    rng = np.random.default_rng(4)
    masks = np.zeros((60, 256, 256), dtype=bool)
    masks[:, 100:140, 90:150] = True
    maps = rng.random((60, 256, 256), dtype=np.float32) + masks * np.float32(0.5)
    value = pixel_auroc(masks, maps)
    # Uniform noise on [0, 1) against the same shifted by 0.5: AUROC = 1 - 0.5**2 / 2 = 0.875.
    assert value == pytest.approx(0.875, abs=0.002)


def test_pixel_auroc_refuses_mismatched_shapes() -> None:
    with pytest.raises(EdgekitError, match="same shape|one shape"):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5)))


def _scipy_labels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    return ndimage.label(mask, structure=np.ones((3, 3), dtype=int))


@pytest.mark.parametrize("density", [0.2, 0.45, 0.6])
def test_connected_components_match_scipy_8_connectivity(density: float) -> None:
    rng = np.random.default_rng(int(density * 100))
    mask = rng.random((40, 33)) < density
    labels, count = connected_components(mask)
    expected, expected_count = _scipy_labels(mask)
    assert count == expected_count
    np.testing.assert_array_equal(labels, expected)


def test_connected_components_join_diagonal_neighbours_only_with_8_connectivity() -> None:
    mask = np.array([[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 1]], dtype=bool)
    labels, count = connected_components(mask)
    assert count == 2
    np.testing.assert_array_equal(labels, [[1, 0, 0, 0], [0, 1, 0, 2], [0, 0, 0, 2]])


# One 3x4 image: region A = two pixels top left, region B = one pixel, nine normal pixels.
PRO_MASK = np.array([[1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=bool)
PRO_MAP = np.array([[0.9, 0.5, 0.8, 0.1], [0.6, 0.1, 0.1, 0.7], [0.1, 0.1, 0.1, 0.1]])
# Curve (FPR, PRO): (0, 0) (0, .25) (1/9, .25) (1/9, .75) (2/9, .75) (2/9, 1) (1, 1).


def test_pro_score_matches_hand_computed_curve() -> None:
    # Up to 0.3: .25 * 1/9 + .75 * 1/9 + 1 * (0.3 - 2/9) = 0.3 - 1/9; / 0.3 = 17/27.
    assert pro_score(PRO_MASK[None], PRO_MAP[None]) == pytest.approx(17 / 27, abs=1e-12)
    # Up to 0.2 the cut falls inside the .75 step: .25/9 + .75 * (0.2 - 1/9) = 17/180; / 0.2.
    assert pro_score(PRO_MASK[None], PRO_MAP[None], fpr_limit=0.2) == pytest.approx(17 / 36, abs=1e-12)


def test_pro_score_averages_regions_not_pixels() -> None:
    mask = np.zeros((1, 8, 8), dtype=bool)
    mask[0, :4, :4] = True  # big region, 16 pixels, found
    mask[0, 7, 7] = True  # small region, 1 pixel, missed
    scores = np.where(mask, 1.0, 0.5)
    scores[0, 7, 7] = 0.0  # below every normal pixel: found only when FPR reaches 1
    # Curve (0, 0) (0, 0.5) (1, 0.5) (1, 1): PRO is 0.5 all the way to the 0.3 limit.
    assert pro_score(mask, scores) == pytest.approx(0.5, abs=1e-12)
    # Per pixel, 16 of the 17 anomalous pixels rank above every normal one.
    assert pixel_auroc(mask, scores) == pytest.approx(16 / 17, abs=1e-12)


def test_pro_score_is_one_for_a_perfect_map() -> None:
    rng = np.random.default_rng(5)
    masks = rng.random((3, 20, 20)) > 0.9
    maps = np.where(masks, 2.0 + rng.random(masks.shape), rng.random(masks.shape))
    assert pro_score(masks, maps) == pytest.approx(1.0, abs=1e-12)
    assert pro_score(masks, maps, steps=50) == pytest.approx(1.0, abs=1e-12)


def test_pro_score_with_steps_approaches_the_exact_value() -> None:
    rng = np.random.default_rng(6)
    masks = np.zeros((2, 32, 32), dtype=bool)
    masks[0, 5:12, 5:15] = True
    masks[1, 20:30, 3:6] = True
    masks[1, 2, 30] = True
    maps = rng.random(masks.shape) + masks * 0.6
    exact = pro_score(masks, maps)
    assert 0.5 < exact < 1.0
    assert pro_score(masks, maps, steps=5000) == pytest.approx(exact, abs=2e-3)


def test_pro_score_refuses_masks_without_regions_and_bad_limits() -> None:
    with pytest.raises(EdgekitError, match="at least one anomalous region"):
        pro_score(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4)))
    with pytest.raises(EdgekitError, match="fpr_limit"):
        pro_score(PRO_MASK[None], PRO_MAP[None], fpr_limit=0.0)
    with pytest.raises(EdgekitError, match="steps"):
        pro_score(PRO_MASK[None], PRO_MAP[None], steps=1)


def _sklearn_best_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(f1.max())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_f1_optimal_threshold_matches_sklearn_best_f1(seed: int) -> None:
    labels, scores = _tied_scores(np.random.default_rng(10 + seed), 200)
    threshold, f1 = f1_optimal_threshold(labels, scores)
    assert f1 == pytest.approx(_sklearn_best_f1(labels, scores), abs=1e-12)
    # The threshold reproduces that F1 under the runtime's rule, score > threshold.
    assert f1_at_threshold(labels, scores, threshold) == pytest.approx(f1, abs=1e-12)
    assert f1_score(labels, scores > threshold) == pytest.approx(f1, abs=1e-12)


def test_f1_optimal_threshold_sits_midway_between_scores() -> None:
    threshold, f1 = f1_optimal_threshold([0, 0, 1, 1], [0.1, 0.2, 0.6, 0.9])
    assert (threshold, f1) == (pytest.approx(0.4), 1.0)
    # Flagging everything is best here: the threshold sits half a gap below the lowest score.
    threshold, f1 = f1_optimal_threshold([1, 1, 1], [0.2, 0.4, 0.8])
    assert (threshold, f1) == (pytest.approx(0.1), 1.0)


def test_f1_at_threshold_uses_strictly_greater() -> None:
    labels, scores = [0, 1, 1], [0.5, 0.5, 0.9]
    assert f1_at_threshold(labels, scores, 0.5) == pytest.approx(2 * 1 / (1 + 2))
    assert f1_at_threshold(labels, scores, 0.49) == pytest.approx(2 * 2 / (3 + 2))
