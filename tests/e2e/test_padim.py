"""PaDiM: the numpy Mahalanobis head against anomalib's, and train → export → device on brick."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from export_helpers import bundle_exporter

from edgekit.errors import EdgekitError
from edgekit.families.padim.train import GaussianFit, PadimNetwork, channel_subset
from edgekit.runtime.heads import HEADS, MahalanobisHead


def _gaussians(dims: int = 24, grid: int = 8, images: int = 40, seed: int = 0):
    """Correlated random training embeddings, their fitted Gaussians, and 3 test embeddings."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dims, dims)) / np.sqrt(dims)

    def draw(count):
        return np.einsum("de,nehw->ndhw", mixing, rng.normal(size=(count, dims, grid, grid))).astype(np.float32) + 1.5

    train = draw(images)
    fit = GaussianFit()
    fit.add(train[:17])  # two batches of different sizes: the accumulation must not depend on them
    fit.add(train[17:])
    mean, inverse = fit.statistics()
    test = draw(3)
    test[0, :, 2, 5] += 4.0  # one anomalous position
    return train, mean, inverse, test


# -- the head ------------------------------------------------------------------------------------------


def test_gaussian_fit_equals_numpy_cov_plus_001_identity_per_position():
    train, mean, inverse, _ = _gaussians()
    vectors = train.reshape(len(train), train.shape[1], -1).astype(np.float64)
    for position in (0, 27, 63):
        expected = np.cov(vectors[:, :, position], rowvar=False) + 0.01 * np.eye(train.shape[1])
        np.testing.assert_allclose(mean[position], vectors[:, :, position].mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(inverse[position], np.linalg.inv(expected), rtol=1e-5, atol=1e-5)


def test_head_equals_anomalibs_padim_anomaly_map_to_1e5_relative():
    from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator

    _, mean, inverse, test = _gaussians()
    scores, maps = MahalanobisHead(mean=mean, inv_covariance=inverse, output_height=64, output_width=48)(test)
    with torch.no_grad():  # anomalib holds the mean as (d, P)
        expected = AnomalyMapGenerator(sigma=4)(
            embedding=torch.from_numpy(test),
            mean=torch.from_numpy(mean.T.copy()),
            inv_covariance=torch.from_numpy(inverse),
            image_size=(64, 48),
        )
    expected = expected[:, 0].numpy()
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-5 * float(expected.max()))
    np.testing.assert_allclose(scores, expected.reshape(3, -1).max(axis=1), rtol=1e-5)
    assert scores[0] > 1.5 * scores[1:].max()  # the shifted position stands out


def test_head_is_registered_and_refuses_arrays_that_do_not_match():
    _, mean, inverse, test = _gaussians()
    params = {"blur_sigma": 4.0, "dtype": "float16"}
    head = HEADS["mahalanobis"].from_params(
        params, {"mean": mean, "inv_covariance": inverse.astype(np.float16)}, output_height=16, output_width=16
    )
    assert head.inv_covariance.dtype == np.float32
    with pytest.raises(EdgekitError, match="stored as float32, the manifest says float16"):
        HEADS["mahalanobis"].from_params(
            params, {"mean": mean, "inv_covariance": inverse}, output_height=16, output_width=16
        )
    with pytest.raises(EdgekitError, match="does not match the Gaussians"):
        head(test[:, :10])
    flops, touched = head.cost(8, 8)
    assert touched > 4 * 64 * 24 * 24 and flops > 2 * 64 * 24 * 24


def test_subset_taken_per_level_before_the_resize_equals_anomalibs_concatenate_then_select():
    import torch.nn.functional as F

    from edgekit.train.backbones import build_feature_extractor

    extractor = build_feature_extractor("tf_efficientnet_lite0", layers=(2, 3), pretrained=False)
    index = channel_subset(152, 64, seed=3)
    assert index == sorted(set(index)) and len(index) == 64 and index[-1] < 152
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fine, coarse = extractor(image)
        whole = torch.cat([fine, F.interpolate(coarse, size=fine.shape[-2:], mode="nearest")], dim=1)
        np.testing.assert_array_equal(PadimNetwork(extractor, index)(image).numpy(), whole[:, index].numpy())


# -- train → export → device on brick -------------------------------------------------------------------


@pytest.fixture(scope="module")
def padim_run(brick, tmp_path_factory):
    from edgekit.families.padim.train import train_padim

    return train_padim(brick, tmp_path_factory.mktemp("padim") / "run")


@pytest.fixture(scope="module")
def bundles(padim_run, tmp_path_factory):
    """Each bundle exported once: (target, format, precision) -> path."""
    return bundle_exporter(padim_run.path, tmp_path_factory.mktemp("padim-bundles"))


@pytest.fixture(scope="module")
def some_test_images(brick) -> list[Path]:
    return sorted((brick / "test").glob("*/*.png"))[::6]  # 10 of 60, every kind


@pytest.fixture(scope="module")
def x86_scores(bundles, some_test_images):
    import edgekit

    return edgekit.load(bundles("x86", "openvino", "fp32")).raw(some_test_images)


@pytest.mark.e2e
def test_run_records_what_export_reads_and_fits_only_bank_images(padim_run):
    config = padim_run.config
    assert config["model"] == "padim" and config["backbone"] == "tf_efficientnet_lite0"
    assert config["layers"] == [2, 3] and config["grid"] == [32, 32] and config["dims"] == 64
    assert config["input"]["height"] == 256 and config["input"]["channels"] == 3
    assert len(config["bank_images"]) == 48 and len(config["holdout_images"]) == 12
    assert not set(config["bank_images"]) & set(config["holdout_images"])
    assert padim_run.array("inv_covariance").shape == (1024, 64, 64)
    assert config["train_seconds"] > 0 and config["seed"] == 0


@pytest.mark.e2e
def test_brick_image_auroc_at_least_099_and_pixel_auroc_097(padim_run):
    # measured (seed 0): image 1.000, pixel 0.983; subset seeds 1 and 2: 0.999 / 0.977 and 1.000 / 0.982
    metrics = json.loads((padim_run.path / "metrics.json").read_text())
    assert metrics["test_images"] == 60
    assert metrics["image_auroc"] >= 0.99 and metrics["pixel_auroc"] >= 0.97


@pytest.mark.e2e
def test_x86_fp32_bundle_scores_equal_the_training_path_to_1e5_relative(
    padim_run, bundles, some_test_images, x86_scores
):
    from edgekit.bundle import load_bundle
    from edgekit.families.padim.train import score_run

    train_scores, train_maps = score_run(padim_run, some_test_images)
    device_scores, device_maps = x86_scores
    np.testing.assert_allclose(device_scores, train_scores, rtol=1e-5)  # measured: 5.5e-7
    np.testing.assert_allclose(device_maps, train_maps, rtol=1e-5, atol=1e-5 * float(train_maps.max()))
    manifest = load_bundle(bundles("x86", "openvino", "fp32")).manifest
    assert manifest.head.kind == "mahalanobis" and manifest.head.params["dtype"] == "float16"
    assert manifest.export["output_shape"] == [1, 64, 32, 32]


@pytest.mark.e2e
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_rpi4_fp32_bundles_give_the_x86_scores_to_1e5_relative(fmt, bundles, some_test_images, x86_scores):
    import edgekit

    scores, maps = edgekit.load(bundles("rpi4", fmt, "fp32")).raw(some_test_images)
    np.testing.assert_allclose(scores, x86_scores[0], rtol=1e-5)  # measured: TFLite 7.6e-7, ONNX 4.1e-7
    np.testing.assert_allclose(maps, x86_scores[1], rtol=1e-5, atol=2e-5 * float(x86_scores[1].max()))


@pytest.mark.e2e
def test_x86_int8_loses_at_most_001_image_auroc_and_refits_its_thresholds(padim_run, bundles, brick):
    import edgekit
    from edgekit.check import check_bundles
    from edgekit.runtime.decision import fit_decision

    fp32, int8 = bundles("x86", "openvino", "fp32"), bundles("x86", "openvino", "int8")
    result = check_bundles(fp32, int8, brick)
    assert result.images == 60 and result.reference.auroc >= 0.99
    assert result.auroc_drop <= 0.01
    detector = edgekit.load(int8)
    expected = fit_decision(*detector.raw(padim_run.config["holdout_images"]))
    decision = detector.manifest.decision
    assert decision.fitted_on == 12
    assert decision.image_threshold == pytest.approx(expected.image_threshold, rel=1e-6)
    fp32_threshold = edgekit.load(fp32).manifest.decision.image_threshold
    assert abs(decision.image_threshold - fp32_threshold) > 1e-4 * fp32_threshold
    assert detector.manifest.export["quantization"]["stay_float"] == ["depthwise", "first_convolution"]


@pytest.mark.e2e
def test_predicting_with_a_padim_bundle_leaves_torch_out_of_sys_modules(bundles, brick):
    image = sorted((brick / "test" / "stain").iterdir())[0]
    code = (
        "import sys, edgekit; p = edgekit.load(sys.argv[1]).predict(sys.argv[2]); "
        "print(p.raw_score, p.anomaly_map.shape, 'torch' in sys.modules)"
    )
    bundle = bundles("x86", "openvino", "fp32")
    out = subprocess.run(
        [sys.executable, "-c", code, str(bundle), str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    score, rest = out.split(" ", 1)
    assert float(score) > 0 and rest == "(256, 256) False"


@pytest.mark.e2e
def test_bank_options_are_refused_for_padim_before_any_work(padim_run, tmp_path):
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run

    with pytest.raises(
        EdgekitError,
        match=r"^--bank-\* options apply to models with a memory bank \(patchcore\), "
        r"not padim$",
    ):
        export_run(padim_run.path, tmp_path / "bundle", options=ExportOptions(bank_dtype="int8"))
    assert not (tmp_path / "bundle").exists()


def test_dims_beyond_the_layers_channels_is_one_error_and_writes_nothing(brick, tmp_path):
    from edgekit.families.padim.train import train_padim

    with pytest.raises(EdgekitError, match=r"dims must be in 1\.\.152"):
        train_padim(brick, tmp_path / "run", dims=200)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_patchcore_option_for_padim_in_one_line(brick, tmp_path):
    from edgekit.cli import cli

    result = CliRunner().invoke(
        cli,
        ["train", "--model", "padim", "--coreset-ratio", "0.1", "--data", str(brick), "--out", str(tmp_path / "run")],
    )
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: --coreset-ratio does not apply to model 'padim'"]
    assert not (tmp_path / "run").exists()
