"""EfficientAD and its offline PDN teacher: distillation, teacher files, train → export → device runtime.

Kept fast: the teacher is distilled for 16 steps on 64² views, EfficientAD trains on 6 of the
brick training images for one epoch (6 steps) and is scored on 10 of the 60 test images.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from cli_helpers import assert_one_error_line
from cli_helpers import run as run_cli
from export_helpers import bundle_exporter

import edgekit
from edgekit.data.datasets import open_dataset
from edgekit.errors import EdgekitError

torch = pytest.importorskip("torch")

TEST_SIZE = 256  # the smallest EfficientAD allows (the autoencoder's encoder)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    from edgekit.families.efficient_ad.pdn_teacher import train_pdn_teacher

    return train_pdn_teacher(None, tmp_path_factory.mktemp("teacher") / "run", epochs=1, batch_size=4, image_size=64)


@pytest.fixture(scope="module")
def small_brick(brick):
    """brick with 8 training images (6 trained on, 2 held out) and every sixth test image (10)."""
    dataset = open_dataset(brick)
    return replace(dataset, train=dataset.train[:8], test=dataset.test[::6])


@pytest.fixture(scope="module")
def ead_run(small_brick, teacher_run, tmp_path_factory):
    from edgekit.families.efficient_ad.train import train_efficient_ad

    return train_efficient_ad(
        small_brick,
        tmp_path_factory.mktemp("ead") / "run",
        teacher_weights=teacher_run.path,
        image_size=TEST_SIZE,
        epochs=1,
    )


@pytest.fixture(scope="module")
def bundles(ead_run, tmp_path_factory):
    """Each bundle exported once: (target, format, precision) -> path."""
    return bundle_exporter(ead_run.path, tmp_path_factory.mktemp("ead-bundles"))


@pytest.fixture(scope="module")
def training_scores(ead_run, small_brick):
    from edgekit.families.efficient_ad.train import score_run

    images = [s.path for s in small_brick.test]
    return images, score_run(ead_run, images)


# -- the teacher ------------------------------------------------------------------------------------


def test_distilled_teacher_reproduces_its_backbone_targets_better_than_a_random_pdn(teacher_run):
    from edgekit.families.efficient_ad.pdn_teacher import (
        BackboneTargets,
        load_teacher,
        natural_images,
        new_pdn,
        random_views,
    )

    teacher, origin = load_teacher(teacher_run.path)
    assert "pdn-teacher run" in origin and "tf_efficientnet_lite0" in origin
    padded = new_pdn(padding=True)
    padded.load_state_dict(teacher.state_dict())
    torch.manual_seed(123)
    random_pdn = new_pdn(padding=True).eval()
    views = torch.from_numpy(random_views(natural_images(), 16, 64, np.random.default_rng(99)))
    with torch.no_grad():
        targets = BackboneTargets()(views)
        wanted = (targets - targets.mean(dim=(0, 2, 3), keepdim=True)) / targets.std(dim=(0, 2, 3), keepdim=True)
        errors = [float(torch.nn.functional.mse_loss(net(views), wanted)) for net in (padded.eval(), random_pdn)]
    # measured: 0.967 distilled (16 steps) vs 1.002 random (standardised targets: 1.0 = each channel's mean)
    assert errors[0] < 0.985 and errors[1] - errors[0] > 0.02, errors
    metrics = json.loads((teacher_run.path / "metrics.json").read_text())
    assert metrics["distillation_mse"] < metrics["random_pdn_mse"]
    assert teacher_run.config["model"] == "pdn-teacher" and teacher_run.config["views"] == 64


def test_an_anomalib_format_teacher_file_loads_and_a_mismatching_one_is_one_error_line(tmp_path, brick):
    from anomalib.models.image.efficient_ad.torch_model import SmallPatchDescriptionNetwork

    from edgekit.families.efficient_ad.pdn_teacher import load_teacher

    torch.manual_seed(0)
    pdn = SmallPatchDescriptionNetwork(out_channels=384)
    torch.save(pdn.state_dict(), tmp_path / "pretrained_teacher_small.pth")
    teacher, origin = load_teacher(tmp_path / "pretrained_teacher_small.pth")
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(teacher(image), pdn.eval()(image))
    assert "teacher file" in origin and not any(p.requires_grad for p in teacher.parameters())

    torch.save(SmallPatchDescriptionNetwork(out_channels=128).state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(EdgekitError, match="not a PDN-small teacher with 384 channels.*shape mismatches"):
        load_teacher(tmp_path / "wrong.pth")
    result = run_cli(
        "train",
        "--model",
        "efficient_ad",
        "--data",
        brick,
        "--out",
        tmp_path / "run",
        "--teacher-weights",
        tmp_path / "wrong.pth",
    )
    assert_one_error_line(result, "wrong.pth", "2 shape mismatches (first: conv4.bias)")
    assert not (tmp_path / "run").exists()
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(EdgekitError, match="not a readable weights-only torch file"):
        load_teacher(tmp_path / "junk.pth")


# -- train → export → device ------------------------------------------------------------------------


@pytest.mark.e2e
def test_run_records_what_the_export_pipeline_reads(ead_run, teacher_run):
    config = ead_run.config
    assert config["model"] == "efficient_ad" and config["image_size"] == TEST_SIZE
    assert "distilled by edgekit" in config["backbone"] and str(teacher_run.path.resolve()) in config["teacher"]
    assert config["input"] == {
        "height": TEST_SIZE,
        "width": TEST_SIZE,
        "channels": 3,
        "mean": [0.0] * 3,
        "std": [1.0] * 3,
        "resize": "pil-bilinear",
    }
    assert len(config["bank_images"]) == 6 and len(config["holdout_images"]) == 2
    assert config["steps"] == 6 and config["quantiles_fitted_on"] == "held-out normals"
    qa_st, qb_st, qa_ae, qb_ae = config["quantiles"]
    assert 0 <= qa_st < qb_st and 0 <= qa_ae < qb_ae
    # teacher 2,694,144 + student 4,267,392 + autoencoder 1,096,320
    assert config["parameters"] == 8_057_856
    metrics = json.loads((ead_run.path / "metrics.json").read_text())
    assert len(metrics["loss"]) == 1 and set(metrics["final_loss_terms"]) == {
        "student_teacher",
        "penalty",
        "autoencoder",
        "student_autoencoder",
    }
    # measured on these 10 test images (3 normal) after 6 steps: image 0.905, pixel 0.978
    assert metrics["image_auroc"] > 0.8 and metrics["pixel_auroc"] > 0.9


@pytest.mark.e2e
@pytest.mark.parametrize("target, fmt", [("x86", "openvino"), ("rpi4", "tflite"), ("rpi4", "onnx")])
def test_fp32_bundle_scores_equal_the_training_path(target, fmt, bundles, training_scores):
    images, (train_scores, train_maps) = training_scores
    detector = edgekit.load(bundles(target, fmt, "fp32"))
    device_scores, device_maps = detector.raw(images)
    # passed at rtol 1e-4 for all three (x86 OpenVINO, rpi4 LiteRT, rpi4 ONNX Runtime fp32)
    np.testing.assert_allclose(device_scores, train_scores, rtol=1e-4)
    np.testing.assert_allclose(device_maps, train_maps, rtol=1e-4, atol=1e-4 * float(np.abs(train_maps).max()))
    manifest = detector.manifest
    assert manifest.head.kind == "map" and manifest.export["output_shape"] == [1, 1, TEST_SIZE // 4, TEST_SIZE // 4]


@pytest.mark.e2e
def test_int8_x86_bundle_keeps_the_normal_scores(ead_run, bundles, training_scores, small_brick, tmp_path):
    """Calibrated on normals only. The recipe's painted calibration (right for the default 48-step
    run, calibration/efficient_ad.toml) is refused by the gate on this 6-step one, by measurement."""
    from edgekit.export.int8_gate import Int8Refused
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run

    with pytest.raises(Int8Refused, match="loses accuracy on defects painted onto its 2 held-out normals"):
        bundles("x86", "openvino", "int8")
    options = ExportOptions(precision="int8", threshold_rule="max", painted_calibration=0.0)
    export_run(ead_run.path, tmp_path / "int8", target="x86", options=options)
    images, (train_scores, _) = training_scores
    int8 = edgekit.load(tmp_path / "int8")
    scores, _ = int8.raw(images)
    normal = np.array([s.label == 0 for s in small_brick.test])
    # The change is measured against the spread of the fp32 scores (quantile-normalised map maxima).
    # Measured: normals 0.03 % at most. Defects are NOT kept: on this 6-step run int8 pulls 4 of 7
    # defect scores down to the normal level (up to 100 % of the spread; image AUROC 0.905 -> 0.571),
    # on the default 48-step brick run by up to 40 % (AUROC 1.000 -> 1.000): activation ranges
    # calibrated on normals clip the defects' larger features. A known limit of the current recipe.
    change = np.abs(scores - train_scores) / float(train_scores.max() - train_scores.min())
    assert normal.sum() == 3 and change[normal].max() < 0.01
    assert int8.manifest.precision == "int8"


@pytest.mark.e2e
def test_exporting_a_teacher_run_is_one_error_line(teacher_run, tmp_path):
    result = run_cli("export", teacher_run.path, "--out", tmp_path / "bundle")
    assert_one_error_line(result, "is a teacher for EfficientAD, not a detector")
    assert not (tmp_path / "bundle").exists()
