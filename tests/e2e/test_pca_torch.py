"""The PCA projection folded into a torch network (the numpy PCA tests are tests/unit/test_pca.py)."""

import numpy as np
import pytest

from edgekit.compress.pca import feature_statistics, fit_pca


def test_folded_network_output_equals_pca_of_unfolded_output(features):
    torch = pytest.importorskip("torch")
    from edgekit.families.patchcore.export import fold_projection

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 24, 3, padding=1), torch.nn.ReLU()).eval()
    pca = fit_pca(feature_statistics(features), 10)
    folded = fold_projection(network, pca)
    image = torch.randn(2, 3, 12, 12)
    with torch.inference_mode():
        unfolded_out, folded_out = network(image).numpy(), folded(image).numpy()
    assert folded_out.shape == (2, 10, 12, 12)
    np.testing.assert_allclose(folded_out, pca.project_maps(unfolded_out), rtol=1e-5, atol=1e-5)
    reference = np.einsum("dc,nchw->ndhw", pca.components, unfolded_out - pca.mean[None, :, None, None])
    np.testing.assert_allclose(folded_out, reference, rtol=1e-4, atol=1e-4)


def test_folded_network_with_the_residual_channel_equals_numpy(features):
    torch = pytest.importorskip("torch")
    from edgekit.families.patchcore.export import fold_projection

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 24, 3, padding=1), torch.nn.ReLU()).eval()
    pca = fit_pca(feature_statistics(features), 10, residual=True)
    image = torch.randn(2, 3, 12, 12)
    with torch.inference_mode():
        unfolded_out, folded_out = network(image).numpy(), fold_projection(network, pca)(image).numpy()
    assert folded_out.shape == (2, 11, 12, 12)
    np.testing.assert_allclose(folded_out, pca.project_maps(unfolded_out), rtol=1e-4, atol=1e-4)
