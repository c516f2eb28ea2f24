"""Greedy k-center coreset selection."""

import numpy as np
import pytest

from edgekit.compress.coreset import coreset_indices, coverage_radius
from edgekit.errors import EdgekitError


def test_selection_is_deterministic_by_seed_and_unique():
    features = np.random.default_rng(0).standard_normal((2000, 32)).astype(np.float32)
    first = coreset_indices(features, 200, seed=3)
    assert np.array_equal(first, coreset_indices(features, 200, seed=3))
    assert len(np.unique(first)) == 200
    assert not np.array_equal(first, coreset_indices(features, 200, seed=4))


def test_k_center_covers_far_better_than_a_random_subset():
    rng = np.random.default_rng(1)
    # clustered data with a few far outliers: k-center must pick the outliers, random rarely does
    centres = rng.standard_normal((20, 16)) * 10
    features = (centres[rng.integers(0, 20, 3000)] + rng.standard_normal((3000, 16))).astype(np.float32)
    for i in range(5):  # five outliers, each far away in its own direction
        features[i, i] += 200
    chosen = coreset_indices(features, 100, projection_dims=None, seed=0)
    random = rng.choice(len(features), 100, replace=False)
    assert set(range(5)) <= set(chosen.tolist())
    assert coverage_radius(features, chosen) < 0.6 * coverage_radius(features, random)


def test_projection_keeps_coverage_within_ten_percent_of_exact_selection():
    features = np.random.default_rng(2).standard_normal((3000, 256)).astype(np.float32)
    exact = coverage_radius(features, coreset_indices(features, 150, projection_dims=None))
    projected = coverage_radius(features, coreset_indices(features, 150, projection_dims=128))
    assert projected <= exact * 1.10


@pytest.mark.parametrize("count", [0, 11])
def test_impossible_sizes_are_refused(count):
    with pytest.raises(EdgekitError, match="coreset size"):
        coreset_indices(np.zeros((10, 3), np.float32), count)


def test_selection_continues_from_rows_already_covered():
    rng = np.random.default_rng(3)
    existing = rng.standard_normal((50, 8)).astype(np.float32)
    features = np.concatenate(
        [
            existing + rng.standard_normal((50, 8)).astype(np.float32) * 0.01,
            rng.standard_normal((20, 8)).astype(np.float32) + 30,
        ]
    )  # 20 new, far away
    chosen = coreset_indices(features, 20, projection_dims=None, covered_by=existing)
    assert set(chosen.tolist()) == set(range(50, 70))  # near-copies of covered rows are never picked
    to_existing = np.linalg.norm(features[:, None] - existing[None], axis=-1).min(1)
    assert chosen[0] == int(np.argmax(to_existing))
    with pytest.raises(EdgekitError, match="already selected"):
        coreset_indices(features, 5, covered_by=np.zeros((3, 4), np.float32))
