"""STFPM: the map and loss against anomalib's, and train → export → device on brick."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_error_line
from cli_helpers import run as run_cli
from export_helpers import bundle_exporter

from edgekit.errors import EdgekitError

#: The test run: few epochs at 128² (a quarter of the default's work per epoch) to keep the file fast.
TEST_EPOCHS, TEST_SIZE = 3, 128


def _pyramid_features(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Teacher-like and student-like features at Lite0's levels 1-3 for a 64² input (2 images)."""
    generator = torch.Generator().manual_seed(seed)
    levels = ((24, 16), (40, 8), (112, 4))
    teacher = [torch.randn(2, channels, size, size, generator=generator) for channels, size in levels]
    student = [t + 0.5 * torch.randn(t.shape, generator=generator) for t in teacher]
    return teacher, student


# -- the map and the loss ----------------------------------------------------------------------------


def test_anomaly_map_at_the_input_size_equals_anomalibs_generator():
    from anomalib.models.image.stfpm.anomaly_map import AnomalyMapGenerator

    from edgekit.families.stfpm.train import anomaly_map

    teacher, student = _pyramid_features()
    expected = AnomalyMapGenerator()(
        teacher_features=dict(enumerate(teacher)), student_features=dict(enumerate(student)), image_size=(64, 64)
    )
    ours = anomaly_map(teacher, student, (64, 64))
    assert ours.shape == (2, 1, 64, 64)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6 * float(expected.max()))  # measured: 3.8e-7


def test_the_map_at_the_first_grid_multiplies_the_levels_without_resizing_the_first():
    from edgekit.families.stfpm.train import anomaly_map, layer_map

    teacher, student = _pyramid_features(1)
    grid = anomaly_map(teacher, student, (16, 16))
    deeper = [
        torch.nn.functional.interpolate(layer_map(t, s), size=(16, 16), mode="bilinear", align_corners=False)
        for t, s in zip(teacher[1:], student[1:])
    ]
    torch.testing.assert_close(grid, layer_map(teacher[0], student[0]) * deeper[0] * deeper[1])
    assert float(layer_map(teacher[0], teacher[0]).abs().max()) == 0.0  # a perfect student maps to zero


def test_anomalibs_loss_is_the_batch_sum_of_each_levels_mean_map():
    """The training loss (anomalib's STFPMLoss, used as it is) and the exported map measure the same thing."""
    from anomalib.models.image.stfpm.loss import STFPMLoss

    from edgekit.families.stfpm.train import layer_map

    teacher, student = _pyramid_features(2)
    loss = STFPMLoss()(dict(enumerate(teacher)), dict(enumerate(student)))
    expected = sum(layer_map(t, s).mean(dim=(2, 3)).sum() for t, s in zip(teacher, student))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)


def test_student_trains_and_teacher_stays_frozen_in_eval_mode():
    from edgekit.families.stfpm.train import build_network

    network = build_network({"backbone": "tf_efficientnet_lite0", "layers": [1, 2, 3]}, pretrained=False)
    network.train()
    assert network.student.training and not network.teacher.training
    assert all(p.requires_grad for p in network.student.parameters())
    assert not any(p.requires_grad for p in network.teacher.parameters())
    teacher, student = network.features(torch.randn(2, 3, 64, 64))
    assert [tuple(t.shape[1:]) for t in teacher] == [(24, 16, 16), (40, 8, 8), (112, 4, 4)]
    assert all(not t.requires_grad for t in teacher) and all(s.requires_grad for s in student)
    network.eval()
    assert network(torch.randn(1, 3, 64, 64)).shape == (1, 1, 16, 16)


# -- train → export → device on brick ----------------------------------------------------------------


@pytest.fixture(scope="module")
def stfpm_run(brick, tmp_path_factory):
    from edgekit.families.stfpm.train import train_stfpm

    return train_stfpm(brick, tmp_path_factory.mktemp("stfpm") / "run", epochs=TEST_EPOCHS, image_size=TEST_SIZE)


@pytest.fixture(scope="module")
def bundles(stfpm_run, tmp_path_factory):
    """Each bundle exported once: (target, format, precision) -> path."""
    return bundle_exporter(stfpm_run.path, tmp_path_factory.mktemp("stfpm-bundles"))


@pytest.fixture(scope="module")
def some_test_images(brick) -> list[Path]:
    return sorted((brick / "test").glob("*/*.png"))[::6]  # 10 of 60, every kind


@pytest.fixture(scope="module")
def training_scores(stfpm_run, some_test_images):
    from edgekit.families.stfpm.train import score_run

    return score_run(stfpm_run, some_test_images)


@pytest.mark.e2e
def test_run_records_what_export_reads(stfpm_run):
    config = stfpm_run.config
    assert config["model"] == "stfpm" and config["backbone"] == "tf_efficientnet_lite0"
    assert config["layers"] == [1, 2, 3] and config["strides"] == [4, 8, 16]
    assert config["image_size"] == TEST_SIZE and config["input"]["height"] == TEST_SIZE
    assert config["input"]["mean"] == [0.5, 0.5, 0.5] and config["input"]["channels"] == 3
    assert (config["epochs"], config["batch_size"], config["learning_rate"], config["seed"]) == (TEST_EPOCHS, 8, 0.4, 0)
    assert config["head"] == {"score": "top_mean", "top_fraction": 0.01, "blur_sigma": 4.0}
    assert 0 < config["trained_parameters"] < config["parameters"]
    assert len(config["bank_images"]) == 48 and len(config["holdout_images"]) == 12
    assert not set(config["bank_images"]) & set(config["holdout_images"])
    assert config["train_seconds"] > 0 and (stfpm_run.path / "network.safetensors").is_file()


@pytest.mark.e2e
def test_teacher_keeps_the_registrys_imagenet_weights_and_student_moved(stfpm_run):
    from edgekit.families.stfpm.train import build_network, load_network
    from edgekit.train.backbones import build_feature_extractor

    trained = load_network(stfpm_run).state_dict()
    imagenet = build_feature_extractor("tf_efficientnet_lite0", layers=(1, 2, 3)).state_dict()
    for key, value in imagenet.items():
        torch.testing.assert_close(trained[f"teacher.{key}"], value, rtol=0, atol=0)
    torch.manual_seed(0)
    initial = build_network(dict(stfpm_run.config)).student.state_dict()
    moved = [
        key
        for key, value in initial.items()
        if value.is_floating_point() and key.endswith("weight") and not torch.equal(value, trained[f"student.{key}"])
    ]
    assert len(moved) == sum(key.endswith("weight") for key in initial)


@pytest.mark.e2e
def test_brick_auroc_after_a_short_training_is_above_the_measured_floor(stfpm_run):
    metrics = json.loads((stfpm_run.path / "metrics.json").read_text())
    assert metrics["test_images"] == 60 and len(metrics["loss"]) == TEST_EPOCHS
    assert metrics["loss"][-1] < metrics["loss"][0]
    # measured (3 epochs, 128², seed 0): image 0.848, pixel 0.954 (the default 10 epochs at 256²: see the module)
    assert metrics["image_auroc"] >= 0.8 and metrics["pixel_auroc"] >= 0.93


@pytest.mark.e2e
def test_x86_fp32_bundle_scores_equal_the_training_path(stfpm_run, bundles, some_test_images, training_scores):
    import edgekit

    detector = edgekit.load(bundles("x86", "openvino", "fp32"))
    scores, maps = detector.raw(some_test_images)
    train_scores, train_maps = training_scores
    np.testing.assert_allclose(scores, train_scores, rtol=1e-5)  # measured: 5.1e-7
    np.testing.assert_allclose(maps, train_maps, rtol=1e-5, atol=1e-5 * float(train_maps.max()))  # 5.9e-7 of max
    manifest = detector.manifest
    assert manifest.head.kind == "map" and manifest.head.arrays == {}
    assert manifest.export["output_shape"] == [1, 1, TEST_SIZE // 4, TEST_SIZE // 4]


@pytest.mark.e2e
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_rpi4_fp32_bundles_give_the_training_scores(fmt, bundles, some_test_images, training_scores):
    import edgekit

    detector = edgekit.load(bundles("rpi4", fmt, "fp32"))
    assert detector.manifest.runtime == {"tflite": "litert", "onnx": "onnxruntime"}[fmt]
    scores, maps = detector.raw(some_test_images)
    # measured: scores TFLite 8.4e-7, ONNX 2.2e-7; maps 1.3e-6 and 4.7e-7 of the largest value
    np.testing.assert_allclose(scores, training_scores[0], rtol=1e-5)
    np.testing.assert_allclose(maps, training_scores[1], rtol=1e-5, atol=1e-5 * float(training_scores[1].max()))


@pytest.mark.e2e
def test_x86_int8_bundle_keeps_the_auroc_and_fits_its_own_thresholds(stfpm_run, bundles, brick):
    import edgekit
    from edgekit.check import check_bundles

    fp32, int8 = bundles("x86", "openvino", "fp32"), bundles("x86", "openvino", "int8")
    result = check_bundles(fp32, int8, brick)
    # measured with calibration/stfpm.toml: 0.8475 -> 0.849; scores median 2.3 %, max 12 % off fp32
    assert result.images == 60 and result.auroc_drop <= 0.02
    quantization = edgekit.load(int8).manifest.export["quantization"]
    assert quantization["stay_float"] == ["error_map", "depthwise", "first_convolution"]
    decision = edgekit.load(int8).manifest.decision
    assert decision.fitted_on == 12
    assert decision.image_threshold != edgekit.load(fp32).manifest.decision.image_threshold


def test_a_batch_of_one_is_refused_in_one_line_and_writes_nothing(brick, tmp_path):
    from edgekit.families.stfpm.train import train_stfpm

    with pytest.raises(EdgekitError, match=r"--batch-size must be at least 2"):
        train_stfpm(brick, tmp_path / "run", batch_size=1)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_patchcore_option_for_stfpm_in_one_line(brick, tmp_path):
    result = run_cli("train", "--model", "stfpm", "--coreset-ratio", "0.1", "--data", brick, "--out", tmp_path / "run")
    assert_one_error_line(result, "--coreset-ratio", "'stfpm'")
    assert not (tmp_path / "run").exists()
