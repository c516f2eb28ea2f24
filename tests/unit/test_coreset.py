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


def _blobs(rows: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (50, 16))
    return (centres[rng.integers(50, size=rows)] + rng.normal(0, 1, (rows, 16))).astype(np.float32)


def test_streamed_coreset_keeps_its_measured_coverage_bound_and_stays_near_exact_greedy():
    from edgekit.compress.coreset import StreamedCoreset
    from edgekit.runtime.bank import nearest_neighbors

    features = _blobs(40000)
    stream = StreamedCoreset(len(features), 400, 16, chunk_rows=4096, projection_dims=None, seed=0)
    for start in range(0, len(features), 1000):  # batches that straddle chunk boundaries
        stream.add(features[start : start + 1000])
    bank, info = stream.finish()
    assert bank.shape == (400, 16) and info["chunks"] == 10
    assert len({row.tobytes() for row in bank}) == 400
    assert {row.tobytes() for row in bank} <= {row.tobytes() for row in features}  # rows of the input
    radius = float(nearest_neighbors(features, bank)[0].max())
    assert radius <= info["radius_bound"] + 1e-4  # the triangle inequality, on this run's own radii
    exact = coverage_radius(features, coreset_indices(features, 400, projection_dims=None, seed=0))
    assert radius < 1.25 * exact  # measured 7.64 against 6.99


def test_streamed_coreset_refuses_fewer_patches_than_promised():
    from edgekit.compress.coreset import StreamedCoreset

    stream = StreamedCoreset(5000, 50, 16, chunk_rows=1024, seed=0)
    stream.add(_blobs(4000))
    with pytest.raises(EdgekitError, match="promised 5000 patches but got 4000"):
        stream.finish()


def test_the_ratio_keeps_at_most_max_ratio_rows_and_fixed_rows_any_size():
    from edgekit.compress.coreset import MAX_RATIO_ROWS, coreset_count

    assert coreset_count(49152, 0.1) == 4915
    assert coreset_count(4_096_000, 0.1) == MAX_RATIO_ROWS
    assert coreset_count(4_096_000, 0.1, rows=30000) == 30000
