"""The two autoencoders (SAE, DAE): architecture, the map head, and train → export → device runtime."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_error_line
from click.testing import CliRunner

import edgekit
from edgekit.cli import cli
from edgekit.data.datasets import open_dataset
from edgekit.runtime.heads import MapHead

#: Epochs for the test runs: enough to give a non-trivial reconstruction, few for speed.
TEST_EPOCHS = {"sae": 2, "dae": 1}


# -- the map head (numpy only) ----------------------------------------------------------------------


def test_map_head_resizes_like_torch_bilinear_then_blurs():
    torch = pytest.importorskip("torch")
    grid = np.random.default_rng(0).random((3, 8, 12)).astype(np.float32)
    _, resized = MapHead(32, 48)(grid)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(grid)[:, None], size=(32, 48), mode="bilinear", align_corners=False
    )[:, 0].numpy()
    np.testing.assert_allclose(resized, expected, atol=1e-6)
    scores, blurred = MapHead(32, 48, blur_sigma=2.0, score="max")(grid)
    assert blurred.shape == (3, 32, 48) and blurred.dtype == np.float32
    assert blurred.max() < resized.max() and abs(blurred.mean() - resized.mean()) < 0.02 * resized.mean()
    np.testing.assert_allclose(scores, blurred.reshape(3, -1).max(axis=1), rtol=1e-6)


# -- the networks -----------------------------------------------------------------------------------


def test_sae_has_the_specified_layers_and_parameter_count():
    torch = pytest.importorskip("torch")
    from edgekit.families.autoencoders.train import SparseAutoencoder

    model = SparseAutoencoder().eval()
    convs = [m for m in model.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (1, 32, (4, 4), (2, 2), (1, 1)),
        (32, 64, (4, 4), (2, 2), (1, 1)),
    ]
    assert (model.bottleneck.in_features, model.bottleneck.out_features) == (65536, 64)
    assert (model.expand.in_features, model.expand.out_features) == (64, 65536)
    transposed = [m for m in model.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(t.in_channels, t.out_channels, t.stride) for t in transposed] == [(64, 32, (2, 2)), (32, 1, (2, 2))]
    assert isinstance(model.decoder[-1], torch.nn.Sigmoid)
    # convs 544 + 32832, BN 64 + 128 + 64, FC 4194368 + 4259840, transposed convs 32800 + 513
    assert sum(p.numel() for p in model.parameters()) == 8_521_153
    with torch.no_grad():
        reconstruction, code = model(torch.rand(2, 1, 128, 128))
    assert model.encoder(torch.rand(1, 1, 128, 128)).shape == (1, 64, 32, 32)
    assert reconstruction.shape == (2, 1, 128, 128) and code.shape == (2, 64)
    assert 0 <= float(reconstruction.min()) and float(reconstruction.max()) <= 1


def test_dae_has_the_specified_stages_and_parameter_count():
    torch = pytest.importorskip("torch")
    from edgekit.families.autoencoders.train import DeepAutoencoder

    model = DeepAutoencoder().eval()
    convs = [m for m in model.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128, 256, 256]
    assert [c.stride for c in convs] == [(2, 2), (1, 1)] * 4
    assert sum(isinstance(m, torch.nn.LeakyReLU) and m.negative_slope == 0.2 for m in model.encoder) == 8
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.encoder) == 8
    assert (model.bottleneck.in_features, model.bottleneck.out_features) == (16384, 128)
    assert (model.expand.in_features, model.expand.out_features) == (128, 16384)
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in model.decoder) == 4
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.decoder) == 4
    assert isinstance(model.decoder[-1], torch.nn.Sigmoid) and model.decoder[-2].out_channels == 1
    assert sum(p.numel() for p in model.parameters()) == 6_594_273
    with torch.no_grad():
        assert model.encoder(torch.rand(1, 1, 128, 128)).shape == (1, 256, 8, 8)
        reconstruction, code = model(torch.rand(2, 1, 128, 128))
    assert reconstruction.shape == (2, 1, 128, 128) and code.shape == (2, 128)


def test_ssim_is_one_for_identical_images_and_lower_for_noisy_ones():
    torch = pytest.importorskip("torch")
    from edgekit.families.autoencoders.train import ssim

    image = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert float(ssim(image, image)) == pytest.approx(1.0, abs=1e-6)
    noisy = (image + 0.2 * torch.randn(image.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert 0 < float(ssim(image, noisy)) < 0.9
    noisy.requires_grad_(True)
    (1 - ssim(image, noisy)).backward()
    assert noisy.grad is not None and float(noisy.grad.abs().sum()) > 0


# -- train → export → device (e2e) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def grey_brick(tmp_path_factory) -> Path:
    from edgekit.data.synth import synthesize

    (category,) = synthesize(tmp_path_factory.mktemp("grey"), texture="brick", size=128, grayscale=True)
    return category


@pytest.fixture(scope="module")
def runs(grey_brick, tmp_path_factory) -> dict:
    from edgekit.families.autoencoders.train import train_dae, train_sae

    out = tmp_path_factory.mktemp("ae-runs")
    return {
        "sae": train_sae(grey_brick, out / "sae", epochs=TEST_EPOCHS["sae"]),
        "dae": train_dae(grey_brick, out / "dae", epochs=TEST_EPOCHS["dae"]),
    }


@pytest.fixture(scope="module")
def x86_bundles(runs, tmp_path_factory) -> dict:
    from edgekit.export.pipeline import export_run

    out = tmp_path_factory.mktemp("ae-bundles")
    return {model: export_run(run.path, out / f"{model}-x86", target="x86").root for model, run in runs.items()}


def _test_images(grey_brick: Path) -> list[Path]:
    return [s.path for s in open_dataset(grey_brick).test[::6]]  # 10 images, normal and defective


@pytest.mark.e2e
def test_run_records_what_the_export_pipeline_reads(runs):
    for model, run in runs.items():
        config = run.config
        assert config["model"] == model and config["backbone"] == "none" and config["layers"] == []
        assert config["input"] == {
            "height": 128,
            "width": 128,
            "channels": 1,
            "mean": [0.0],
            "std": [1.0],
            "resize": "pil-bilinear",
        }
        assert len(config["bank_images"]) == 48 and len(config["holdout_images"]) == 12
        assert not set(config["bank_images"]) & set(config["holdout_images"])
        metrics = json.loads((run.path / "metrics.json").read_text())
        assert len(metrics["loss"]) == TEST_EPOCHS[model] == metrics["epochs"]
        assert 0.5 < metrics["image_auroc"] <= 1 and 0.5 < metrics["pixel_auroc"] <= 1
        assert (run.path / "network.safetensors").is_file() and config["train_seconds"] > 0


@pytest.mark.e2e
def test_training_is_deterministic_given_the_seed(runs, grey_brick, tmp_path):
    from edgekit.families.autoencoders.train import train_sae

    again = train_sae(grey_brick, tmp_path / "again", epochs=TEST_EPOCHS["sae"])
    digest = [
        hashlib.sha256((run.path / "network.safetensors").read_bytes()).hexdigest() for run in (runs["sae"], again)
    ]
    assert digest[0] == digest[1]


@pytest.mark.e2e
@pytest.mark.parametrize("model", ["sae", "dae"])
def test_x86_bundle_scores_equal_the_training_path_to_1e4_relative(model, runs, x86_bundles, grey_brick):
    from edgekit.families.autoencoders.train import score_run

    images = _test_images(grey_brick)
    train_scores, train_maps = score_run(runs[model], images)
    detector = edgekit.load(x86_bundles[model])
    device_scores, device_maps = detector.raw(images)
    np.testing.assert_allclose(device_scores, train_scores, rtol=1e-4)
    np.testing.assert_allclose(device_maps, train_maps, rtol=1e-4, atol=1e-4 * float(train_maps.max()))
    manifest = detector.manifest
    assert manifest.head.kind == "map" and manifest.head.arrays == {}
    assert manifest.input.channels == 1 and manifest.export["output_shape"] == [1, 1, 128, 128]
    prediction = detector.predict(images[-1])
    assert prediction.anomaly_map.shape == (128, 128)
    assert prediction.raw_score == pytest.approx(train_scores[-1], rel=1e-4)


@pytest.mark.e2e
def test_predicting_with_an_autoencoder_bundle_leaves_torch_out(x86_bundles, grey_brick):
    image = _test_images(grey_brick)[0]
    code = (
        "import sys, edgekit; p = edgekit.load(sys.argv[1]).predict(sys.argv[2]); "
        "print(p.raw_score, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(x86_bundles["sae"]), str(image)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert float(out[0]) > 0 and out[1] == "False"


@pytest.mark.e2e
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_rpi4_fp32_bundle_gives_the_x86_scores_to_1e5_relative(fmt, runs, x86_bundles, grey_brick, tmp_path):
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run

    bundle = export_run(runs["sae"].path, tmp_path / fmt, target="rpi4", options=ExportOptions(format=fmt))
    assert bundle.manifest.runtime == {"tflite": "litert", "onnx": "onnxruntime"}[fmt]
    images = _test_images(grey_brick)
    rpi4_scores, rpi4_maps = edgekit.load(bundle.root).raw(images)
    x86_scores, x86_maps = edgekit.load(x86_bundles["sae"]).raw(images)
    np.testing.assert_allclose(rpi4_scores, x86_scores, rtol=1e-5)
    np.testing.assert_allclose(rpi4_maps, x86_maps, rtol=1e-4, atol=1e-5 * float(x86_maps.max()))


@pytest.fixture(scope="module")
def int8_sae(runs, x86_bundles, grey_brick, tmp_path_factory) -> dict:
    """The SAE's int8 x86 bundle and its and the fp32 bundle's raw scores on the test images, split by label."""
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run

    bundle = export_run(
        runs["sae"].path,
        tmp_path_factory.mktemp("ae-int8") / "sae-int8",
        target="x86",
        options=ExportOptions(precision="int8"),
    )
    samples = open_dataset(grey_brick).test[::6]
    images = [s.path for s in samples]
    normal = np.array([s.label == 0 for s in samples])
    int8_scores, _ = edgekit.load(bundle.root).raw(images)
    fp32_scores, _ = edgekit.load(x86_bundles["sae"]).raw(images)
    return {"bundle": bundle, "normal": normal, "relative": np.abs(int8_scores - fp32_scores) / fp32_scores}


@pytest.mark.e2e
def test_int8_x86_bundle_scores_normals_within_1_percent_and_has_its_own_thresholds(int8_sae, x86_bundles):
    bundle = int8_sae["bundle"]
    assert int8_sae["normal"].sum() == 3
    assert int8_sae["relative"][int8_sae["normal"]].max() < 0.01  # measured: 0.16 % at most
    assert bundle.manifest.precision == "int8" and bundle.manifest.decision.fitted_on == 12
    fp32 = edgekit.load(x86_bundles["sae"]).manifest.decision
    assert bundle.manifest.decision.image_threshold != fp32.image_threshold
    assert bundle.manifest.decision.pixel_threshold != fp32.pixel_threshold


@pytest.mark.e2e
def test_int8_x86_bundle_scores_defects_within_1_percent(int8_sae):
    # measured with those two ops float: 0.23 % at most over all 10 images
    assert int8_sae["relative"][~int8_sae["normal"]].max() < 0.01


@pytest.mark.e2e
def test_max_drop_validates_with_the_bundles_own_map_head(runs, x86_bundles, tmp_path):
    """Accuracy control scores held-out normals, plain and with defects painted on, with the map head
    the bundle ships, so the agreement it records is the one the two bundles give on those images."""
    from edgekit.export import int8_gate
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run
    from edgekit.export.quantize import score_agreement

    bundle = export_run(
        runs["sae"].path, tmp_path / "sae-int8", target="x86", options=ExportOptions(precision="int8", max_drop=0.01)
    )
    validation = bundle.manifest.export["quantization"]["validation"]
    holdout = [Path(p) for p in runs["sae"].config["holdout_images"]]
    images, kinds = int8_gate.painted_set(holdout, bundle.manifest.input, seed=runs["sae"].config["seed"] + 1)
    assert "painted" in validation["metric"] and validation["images"] == len(images) > len(holdout) == 12
    measured, _ = score_agreement(
        int8_gate.bundle_scores(edgekit.load(x86_bundles["sae"]), images),
        int8_gate.bundle_scores(edgekit.load(bundle.root), images),
    )
    assert measured >= 0.99 and validation["agreement"] == pytest.approx(measured, abs=2e-3)


@pytest.mark.e2e
def test_training_an_autoencoder_with_a_patchcore_option_is_one_error_line(grey_brick, tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--model",
            "sae",
            "--data",
            str(grey_brick),
            "--out",
            str(tmp_path / "run"),
            "--coreset-ratio",
            "0.1",
        ],
    )
    assert_one_error_line(result, "--coreset-ratio", "'sae'")
    assert not (tmp_path / "run").exists()


@pytest.mark.e2e
def test_exporting_an_autoencoder_with_a_bank_option_is_one_error_line(runs, tmp_path):
    result = CliRunner().invoke(
        cli, ["export", str(runs["dae"].path), "--out", str(tmp_path / "bundle"), "--bank-dims", "32"]
    )
    assert_one_error_line(result, "--bank-* options apply to models with a memory bank (patchcore), not dae")
    assert not (tmp_path / "bundle").exists()


@pytest.mark.e2e
def test_every_file_of_a_run_has_the_modes_of_an_ordinary_file(runs):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    for file in runs["sae"].path.iterdir():  # safetensors writes 0600 by itself
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask, file.name
