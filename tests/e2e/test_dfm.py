"""DFM, the ninth family: its PCA error against anomalib's PCA, and train → export → device on brick."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import assert_bundle_gives, bundle_exporter
from export_helpers import some_test_images as every_sixth_test_image

from edgekit.errors import EdgekitError


def _features(seed: int = 0, samples: int = 400, channels: int = 12) -> np.ndarray:
    """Correlated samples: most of the variance in a few directions, some in all of them."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(4, channels))
    return (rng.normal(size=(samples, 4)) * [5, 3, 2, 1]) @ basis + 0.1 * rng.normal(size=(samples, channels)) + 2.0


def test_pca_keeps_the_fewest_components_that_explain_the_variance():
    from edgekit.families.dfm.train import fit_pca

    vectors = _features()
    mean, components, ratios = fit_pca(vectors, 0.97)
    centred = vectors - vectors.mean(axis=0)
    values = np.sort(np.linalg.eigvalsh(np.cov(centred, rowvar=False)))[::-1]
    cumulative = np.cumsum(values) / values.sum()
    k = components.shape[1]
    assert cumulative[k - 1] >= 0.97 > cumulative[k - 2]
    np.testing.assert_allclose(ratios, values[:k] / values.sum(), rtol=1e-9)
    np.testing.assert_allclose(components.T @ components, np.eye(k), atol=1e-9)
    np.testing.assert_allclose(mean, vectors.mean(axis=0))


def test_the_graphs_error_map_equals_anomalibs_pca_reconstruction_error():
    """The exported residual and sum of squares give anomalib's feature reconstruction error with
    the same number of components, per grid position."""
    from anomalib.models.components import PCA

    from edgekit.families.dfm.train import DfmNetwork, fit_pca

    vectors = _features(1, channels=12)
    mean, components, _ = fit_pca(vectors, 0.97)
    reference = PCA(n_components=components.shape[1])
    reference.fit(torch.from_numpy(vectors.astype(np.float32)).clone())
    network = DfmNetwork(torch.nn.Identity(), 1, mean, components)
    new = _features(2, samples=2 * 5 * 5, channels=12) + np.random.default_rng(3).normal(size=(50, 12))
    grid = torch.from_numpy(new.astype(np.float32)).reshape(2, 5, 5, 12).permute(0, 3, 1, 2)
    error = network.error(grid)
    ours = (error * error).sum(dim=1).reshape(-1)
    flat = torch.from_numpy(new.astype(np.float32))
    projected = reference.transform(flat.clone())
    theirs = ((flat - reference.mean) - reference.inverse_transform(projected)).square().sum(dim=1)
    order = grid.permute(0, 2, 3, 1).reshape(-1, 12)  # same row order as ``new``
    torch.testing.assert_close(order, flat)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * float(theirs.max()))
    # a feature on the normal subspace has no error; one off it, its squared distance to the subspace
    on = torch.from_numpy(
        (mean + components @ np.array([3.0] + [0.0] * (components.shape[1] - 1))).astype(np.float32)
    ).reshape(1, 12, 1, 1)
    assert float((network.error(on) ** 2).sum()) < 1e-6


@pytest.fixture(scope="module")
def dfm_run(brick, tmp_path_factory):
    from edgekit.families.dfm.train import train_dfm

    return train_dfm(brick, tmp_path_factory.mktemp("dfm") / "run")


@pytest.fixture(scope="module")
def bundles(dfm_run, tmp_path_factory):
    """Each bundle exported once: (target, format, precision) -> path."""
    return bundle_exporter(dfm_run.path, tmp_path_factory.mktemp("dfm-bundles"))


@pytest.fixture(scope="module")
def some_test_images(brick) -> list[Path]:
    return every_sixth_test_image(brick)


@pytest.fixture(scope="module")
def training_scores(dfm_run, some_test_images):
    from edgekit.families.dfm.train import score_run

    return score_run(dfm_run, some_test_images)


@pytest.mark.e2e
def test_run_records_what_export_reads(dfm_run):
    config = dfm_run.config
    assert config["model"] == "dfm" and config["backbone"] == "tf_efficientnet_lite0"
    assert (config["layers"], config["pooling"], config["variance"]) == ([2], 4, 0.97)
    assert config["grid"] == [8, 8] and config["channels"] == 40
    assert 1 <= config["components"] < 40 and config["explained_variance"] >= 0.97
    assert config["feature_vectors"] == 48 * 64
    assert config["head"] == {"score": "mean", "top_fraction": 0.01, "blur_sigma": 4.0}
    assert len(config["bank_images"]) == 48 and len(config["holdout_images"]) == 12
    assert not set(config["bank_images"]) & set(config["holdout_images"])


@pytest.mark.e2e
def test_backbone_keeps_the_registrys_imagenet_weights(dfm_run):
    from edgekit.families.dfm.train import load_network
    from edgekit.train.backbones import build_feature_extractor

    trained = load_network(dfm_run).state_dict()
    imagenet = build_feature_extractor("tf_efficientnet_lite0", layers=(2,)).state_dict()
    for key, value in imagenet.items():
        torch.testing.assert_close(trained[f"extractor.{key}"], value, rtol=0, atol=0)


@pytest.mark.e2e
def test_brick_auroc_is_above_the_measured_floor(dfm_run):
    metrics = json.loads((dfm_run.path / "metrics.json").read_text())
    # measured (defaults, seed 0): image 1.000, pixel 0.978 (docs/training.md, "DFM")
    assert metrics["test_images"] == 60
    assert metrics["image_auroc"] >= 0.97 and metrics["pixel_auroc"] >= 0.95


@pytest.mark.e2e
def test_x86_fp32_bundle_scores_equal_the_training_path(bundles, some_test_images, training_scores):
    manifest = assert_bundle_gives(bundles("x86", "openvino", "fp32"), some_test_images, training_scores).manifest
    assert manifest.head.kind == "map" and manifest.head.arrays == {}
    assert manifest.export["output_shape"] == [1, 1, 8, 8]


@pytest.mark.e2e
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_rpi4_fp32_bundles_give_the_training_scores(fmt, bundles, some_test_images, training_scores):
    detector = assert_bundle_gives(bundles("rpi4", fmt, "fp32"), some_test_images, training_scores)
    assert detector.manifest.runtime == {"tflite": "litert", "onnx": "onnxruntime"}[fmt]


def test_variance_outside_zero_one_is_refused_in_one_line_and_writes_nothing(brick, tmp_path):
    from edgekit.families.dfm.train import train_dfm

    with pytest.raises(EdgekitError, match=r"DFM variance must be between 0 and 1, not 1.5"):
        train_dfm(brick, tmp_path / "run", variance=1.5)
    assert list(tmp_path.iterdir()) == []
