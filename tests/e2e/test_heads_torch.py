"""Numpy heads against torch and anomalib as oracles (the numpy-only head tests are tests/unit/test_heads.py)."""

import numpy as np
import pytest

from edgekit.runtime.heads import KnnHead, _bilinear_matrix, _gaussian_matrix


def test_bilinear_matrix_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    grid = np.random.default_rng(2).standard_normal((5, 7))
    rows, cols = _bilinear_matrix(40, 5), _bilinear_matrix(56, 7)
    ours = rows @ grid @ cols.T
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(grid)[None, None], size=(40, 56), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_gaussian_matrix_matches_reflect_padded_convolution():
    torch = pytest.importorskip("torch")
    signal = np.random.default_rng(3).standard_normal(64)
    sigma, radius = 4.0, 16
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = torch.nn.functional.pad(torch.from_numpy(signal)[None, None], (radius, radius), mode="reflect")
    ref = torch.nn.functional.conv1d(padded, torch.from_numpy(taps)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(_gaussian_matrix(64, sigma) @ signal, ref, atol=1e-12)


def test_image_scores_equal_anomalib_patchcore_scoring():
    torch = pytest.importorskip("torch")
    patchcore = pytest.importorskip("anomalib.models.image.patchcore.torch_model")
    rng = np.random.default_rng(4)
    bank = rng.standard_normal((400, 16)).astype(np.float32)
    embeddings = rng.standard_normal((3, 16, 6, 6)).astype(np.float32) * 1.5
    head = KnnHead(memory_bank=bank, num_neighbors=9, output_height=48, output_width=48)
    ours, maps = head(embeddings)

    model = patchcore.PatchcoreModel(layers=["layer2"], backbone="resnet18", pre_trained=False, num_neighbors=9)
    model.memory_bank = torch.from_numpy(bank).double()
    flat = torch.from_numpy(embeddings).double().permute(0, 2, 3, 1).reshape(-1, 16)
    patch_scores, locations = model.nearest_neighbors(flat, n_neighbors=1)
    theirs = model.compute_anomaly_score(patch_scores.reshape(3, -1), locations.reshape(3, -1), flat).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)
    assert maps.shape == (3, 48, 48)
    # the map is a smoothed copy of the patch distances: same maximum region, bounded by them
    patch_max = patch_scores.reshape(3, -1).amax(1).numpy()
    assert np.all(maps.max(axis=(1, 2)) <= patch_max + 1e-6)
