"""PCA bank compression: statistics, axes, dimension choice and the folded 1×1 convolution."""

import numpy as np
import pytest

from edgekit.compress.pca import AUTO_VARIANCE, compress_bank, feature_statistics, fit_pca, resolve_dims
from edgekit.errors import EdgekitError


def test_statistics_equal_numpy_mean_and_covariance_across_chunks(features, monkeypatch):
    monkeypatch.setattr("edgekit.compress.pca._STATISTICS_ROWS", 700)  # five uneven chunks
    stats = feature_statistics(features)
    np.testing.assert_allclose(stats.mean, features.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(
        stats.covariance, np.cov(features.astype(np.float64), rowvar=False, bias=True), rtol=1e-9, atol=1e-12
    )
    assert stats.count == 3000


def test_axes_are_orthonormal_sorted_and_match_sklearn(features):
    decomposition = pytest.importorskip("sklearn.decomposition")
    pca = fit_pca(feature_statistics(features), 8)
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(8), atol=1e-10)
    assert np.all(np.diff(pca.variances) <= 0)
    reference = decomposition.PCA(n_components=8, svd_solver="full").fit(features.astype(np.float64))
    signs = np.sign(np.sum(reference.components_ * pca.components, axis=1))
    np.testing.assert_allclose(pca.components, reference.components_ * signs[:, None], atol=1e-6)
    assert pca.explained_variance == pytest.approx(reference.explained_variance_ratio_.sum(), rel=1e-9)


def test_full_rotation_keeps_every_pairwise_distance(features):
    pca = fit_pca(feature_statistics(features), 24)
    projected = pca.project_rows(features[:50]).astype(np.float64)
    original = features[:50].astype(np.float64)
    before = np.linalg.norm(original[:, None] - original[None], axis=-1)
    after = np.linalg.norm(projected[:, None] - projected[None], axis=-1)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_dims_spec_full_auto_and_numbers(features):
    stats = feature_statistics(features)
    assert resolve_dims("full", stats) is None and resolve_dims(None, stats) is None
    assert resolve_dims("24", stats) is None  # all dimensions: no projection at all
    assert resolve_dims("8", stats) == 8
    auto = resolve_dims("auto", stats)
    assert fit_pca(stats, auto).explained_variance >= AUTO_VARIANCE > fit_pca(stats, auto - 1).explained_variance
    for bad, message in [("64", "more than the features' 24"), ("0", "positive integer"), ("half", "positive")]:
        with pytest.raises(EdgekitError, match=message):
            resolve_dims(bad, stats)


def test_map_projection_equals_row_projection(features):
    pca = fit_pca(feature_statistics(features), 6)
    maps = features[: 2 * 5 * 7].reshape(2, 5, 7, 24).transpose(0, 3, 1, 2)
    projected = pca.project_maps(maps)
    rows = pca.project_rows(maps.transpose(0, 2, 3, 1).reshape(-1, 24)).reshape(2, 5, 7, 6).transpose(0, 3, 1, 2)
    assert projected.shape == (2, 6, 5, 7) and projected.dtype == np.float32
    np.testing.assert_allclose(projected, rows, rtol=1e-5, atol=1e-5)


def test_compress_bank_projects_reselects_in_the_projected_space_and_encodes(features):
    pca = fit_pca(feature_statistics(features), 8)
    bank = features[:600]
    compressed = compress_bank(bank, pca=pca, dtype="int8", size=150, seed=1)
    assert compressed.arrays["memory_bank"].shape == (150, 8) and compressed.arrays["memory_bank"].dtype == np.int8
    assert compressed.description == {
        "rows": 150,
        "dims": 8,
        "feature_dims": 24,
        "dtype": "int8",
        "coreset_rows": 600,
        "reselected_from": 600,
        "projection": "pca (folded into the network as a 1x1 convolution)",
        "quantization": "affine per dimension: value = bank_offset + bank_scale * q",
        "explained_variance": round(pca.explained_variance, 6),
        "pca_fitted_on": 3000,
    }
    assert compressed.nbytes == 150 * 8 + 2 * 8 * 4
    uncompressed = compress_bank(bank)
    np.testing.assert_array_equal(uncompressed.arrays["memory_bank"], bank)  # full + float32: the bank itself
    assert uncompressed.pca is None and uncompressed.description["reselected_from"] is None


def test_running_statistics_in_uneven_parts_equal_the_whole():
    from edgekit.compress.pca import RunningStatistics

    features = (np.random.default_rng(5).standard_normal((50000, 12)) * 3 + 40).astype(np.float32)
    running = RunningStatistics(12)
    for start, stop in ((0, 7), (7, 20000), (20000, 20001), (20001, 50000)):
        running.add(features[start:stop])
    result = running.result()
    whole = features.astype(np.float64)
    assert result.count == 50000
    np.testing.assert_allclose(result.mean, whole.mean(axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.covariance, np.cov(whole, rowvar=False, bias=True), rtol=1e-9, atol=1e-9)


def test_the_residual_coordinate_is_the_energy_pca_drops():
    from edgekit.compress.pca import wants_residual

    rng = np.random.default_rng(7)
    features = (rng.standard_normal((4000, 24)) * np.linspace(5, 0.1, 24)).astype(np.float32)
    pca = fit_pca(feature_statistics(features), 6, residual=True)
    rows = pca.project_rows(features[:100]).astype(np.float64)
    assert rows.shape == (100, 7) and pca.output_dims == 7
    centred = features[:100].astype(np.float64) - pca.mean
    # Pythagoras: kept coordinates and the residual hold all of each row's energy
    np.testing.assert_allclose((rows**2).sum(axis=1), (centred**2).sum(axis=1), rtol=1e-5)
    plain = fit_pca(feature_statistics(features), 6).project_rows(features[:100])
    np.testing.assert_array_equal(rows[:, :6].astype(np.float32), plain)
    maps = features[:70].reshape(2, 5, 7, 24).transpose(0, 3, 1, 2)
    projected = pca.project_maps(maps)
    expected = pca.project_rows(maps.transpose(0, 2, 3, 1).reshape(-1, 24)).reshape(2, 5, 7, 7).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(projected, expected, rtol=1e-4, atol=1e-3)
    assert wants_residual("32+r") and wants_residual("auto+R") and not wants_residual("32")
    assert resolve_dims("6+r", feature_statistics(features)) == 6
    with pytest.raises(EdgekitError, match="full\\+r has nothing to add"):
        resolve_dims("full+r", feature_statistics(features))


def test_residual_distances_lie_between_plain_pca_and_full_ones():
    rng = np.random.default_rng(8)
    features = (rng.standard_normal((3000, 20)) * np.linspace(4, 0.2, 20)).astype(np.float32)
    statistics = feature_statistics(features)
    a, b = features[:200], features[200:400]
    full = np.linalg.norm(a.astype(np.float64) - b, axis=1)
    plain = fit_pca(statistics, 5)
    residual = fit_pca(statistics, 5, residual=True)
    low = np.linalg.norm(plain.project_rows(a).astype(np.float64) - plain.project_rows(b), axis=1)
    middle = np.linalg.norm(residual.project_rows(a).astype(np.float64) - residual.project_rows(b), axis=1)
    assert np.all(low <= middle + 1e-4) and np.all(middle <= full + 1e-3)
    assert np.mean(middle) > np.mean(low)
