"""Raspberry Pi bundles: TFLite (litert-torch → LiteRT) at fp32/fp16/int8 and ONNX fp32, from one run.

Every bundle is exported once per module from the session's ``patchcore_run`` and scored once
on the 60 test images of the default brick data; the tests compare those numbers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit.data.datasets import open_dataset
from edgekit.errors import EdgekitError
from edgekit.metrics import image_auroc

pytestmark = pytest.mark.e2e


def _export(run, out: Path, fmt: str, precision: str) -> Path:
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run

    export_run(run.path, out, target="rpi4", options=ExportOptions(format=fmt, precision=precision))
    return out


@pytest.fixture(scope="module")
def test_split(brick):
    samples = open_dataset(brick).test
    return [s.path for s in samples], np.array([s.label for s in samples])


@pytest.fixture(scope="module")
def training_scores(patchcore_run, test_split):
    from edgekit.families.patchcore.train import score_run

    return score_run(patchcore_run, test_split[0])


@pytest.fixture(scope="module")
def bundles(patchcore_run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rpi4")
    return {
        name: _export(patchcore_run, root / name, *name.split("-"))
        for name in ("tflite-fp32", "tflite-fp16", "tflite-int8", "onnx-fp32")
    }


@pytest.fixture(scope="module")
def device_scores(bundles, test_split) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Raw scores and maps of every TFLite bundle on all test images, through edgekit.load."""
    return {name: edgekit.load(path).raw(test_split[0]) for name, path in bundles.items() if name.startswith("tflite")}


def test_rpi_targets_offer_tflite_by_default_and_onnx(bundles):
    from edgekit.targets import get_target

    for name in ("rpi4", "rpi5"):
        target = get_target(name)
        assert target.default_format == "tflite" and target.threads == 4 and target.device == "CPU"
        assert target.formats["tflite"].precisions == ("fp32", "fp16", "int8")
        assert target.formats["tflite"].runtime == "litert" and target.formats["tflite"].layout == "NHWC"
        assert target.formats["onnx"].precisions == ("fp32", "int8") and target.formats["onnx"].runtime == "onnxruntime"
        peak = target.peak
        assert peak["fp32_gflops"] == pytest.approx(
            peak["fp32_flop_per_cycle_per_core"] * peak["clock_ghz"] * peak["cores"]
        )
        assert peak["int8_gops"] == pytest.approx(
            peak["int8_ops_per_cycle_per_core"] * peak["clock_ghz"] * peak["cores"]
        )
    # the A72 has no int8 dot product (int8 multiplies no faster than fp32); the A76 does (4x)
    assert get_target("rpi4").peak["int8_gops"] == get_target("rpi4").peak["fp32_gflops"]
    assert get_target("rpi5").peak["int8_gops"] == 4 * get_target("rpi5").peak["fp32_gflops"]
    manifest = edgekit.load(bundles["tflite-fp32"]).manifest
    assert (manifest.target, manifest.runtime, manifest.network.format, manifest.input.layout) == (
        "rpi4",
        "litert",
        "tflite",
        "NHWC",
    )
    assert manifest.network.files == ("model.tflite",) and manifest.export["threads"] == 4


def test_tflite_fp32_scores_equal_training_path_to_1e4_relative(device_scores, training_scores):
    # measured: scores 1.6e-6 relative, maps 2e-6 of their maximum (XNNPACK vs PyTorch summation order)
    scores, maps = device_scores["tflite-fp32"]
    train_scores, train_maps = training_scores
    np.testing.assert_allclose(scores, train_scores, rtol=1e-4)
    np.testing.assert_allclose(maps, train_maps, rtol=1e-4, atol=1e-4 * float(np.abs(train_maps).max()))


def test_onnx_fp32_rpi4_bundle_equals_training_path_to_1e4_relative(bundles, training_scores, test_split):
    scores, maps = edgekit.load(bundles["onnx-fp32"]).raw(test_split[0][::6])
    train_scores, train_maps = training_scores
    np.testing.assert_allclose(scores, train_scores[::6], rtol=1e-4)
    np.testing.assert_allclose(maps, train_maps[::6], rtol=1e-4, atol=1e-4 * float(np.abs(train_maps).max()))


def test_tflite_fp16_scores_within_2_percent_and_auroc_holds(device_scores, training_scores, test_split):
    # float16 weights, float32 arithmetic: measured 0.5 % at most
    scores, _ = device_scores["tflite-fp16"]
    relative = np.abs(scores - training_scores[0]) / training_scores[0]
    assert relative.max() < 0.02
    labels = test_split[1]
    fp32_auroc = image_auroc(labels, device_scores["tflite-fp32"][0])
    assert image_auroc(labels, scores) >= 0.95 and image_auroc(labels, scores) >= fp32_auroc - 0.01


def test_tflite_int8_scores_stay_close_and_auroc_holds(device_scores, training_scores, test_split):
    # int8 activations: every layer's output is rounded to 256 levels of its calibrated range.
    # Measured: median 2 %, worst image 15 %; thresholds are re-fitted on the int8 model, so what
    # must hold is the ranking (AUROC), not the absolute score.
    scores, _ = device_scores["tflite-int8"]
    relative = np.abs(scores - training_scores[0]) / training_scores[0]
    assert np.median(relative) < 0.05 and relative.max() < 0.3
    labels = test_split[1]
    fp32_auroc = image_auroc(labels, device_scores["tflite-fp32"][0])
    assert fp32_auroc >= 0.95
    assert image_auroc(labels, scores) >= 0.95 and image_auroc(labels, scores) >= fp32_auroc - 0.01


def test_int8_manifest_says_what_was_quantized_and_what_stayed_float(bundles, patchcore_run):
    from edgekit.export.tflite import op_census
    from edgekit.resources import read_toml

    float_graph = op_census(bundles["tflite-fp32"] / "model.tflite")["ops"]
    kept_float = read_toml("calibration", "patchcore")["tflite"]["float_ops"]
    assert kept_float == ["DEPTHWISE_CONV_2D"]
    manifest = edgekit.load(bundles["tflite-int8"]).manifest
    notes = manifest.export["quantization"]
    assert manifest.precision == "int8" and notes["scheme"].startswith("static int8")
    painted = manifest.export["painted_calibration"]["images"]  # the recipe's quarter of them, painted 4 ways
    assert (
        notes["calibration_images"]
        == manifest.export["calibration_images"]
        == len(patchcore_run.config["bank_images"]) + painted
    )
    assert notes["io"] == {"image": "int8", "embedding": "int8"}
    assert f"{float_graph['CONV_2D']} CONV_2D" in notes["quantized"] and "DEPTHWISE" not in notes["quantized"]
    assert notes["float"] == f"{float_graph['DEPTHWISE_CONV_2D']} DEPTHWISE_CONV_2D"  # the kNN head is numpy, outside
    low, high = notes["input_range"]
    seen_low, seen_high = notes["input_range_calibrated"]
    assert low <= seen_low < seen_high <= high
    fp16 = edgekit.load(bundles["tflite-fp16"]).manifest.export["quantization"]
    assert (
        f"{float_graph['CONV_2D']} CONV_2D, {float_graph['DEPTHWISE_CONV_2D']} DEPTHWISE_CONV_2D stored as float16"
        in fp16["quantized"]
    )
    assert "float32" in fp16["float"]
    sizes = {
        name: (path / "model.tflite").stat().st_size for name, path in bundles.items() if name.startswith("tflite")
    }
    # int8: 0.40 of fp32 (the depthwise weights stay float32); fp16: 0.53
    assert sizes["tflite-int8"] < 0.45 * sizes["tflite-fp32"] and sizes["tflite-fp16"] < 0.6 * sizes["tflite-fp32"]


def test_int8_input_is_quantized_over_the_whole_preprocessing_range(bundles, patchcore_run, tmp_path):
    from edgekit.export.tflite import input_range, int8_quantize
    from edgekit.preprocess import InputSpec, prepare
    from edgekit.runtime.backends import BackendOptions
    from edgekit.runtime.backends.litert import load as load_litert

    spec = InputSpec(height=256, width=256, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3, layout="NHWC")
    assert input_range(spec.mean, spec.std) == (-1.0, 1.0)
    calibration = prepare(patchcore_run.config["bank_images"][:4], spec)
    assert calibration.min() > -0.9 and calibration.max() < 0.99  # brick never reaches black or white
    out = tmp_path / "int8.tflite"
    notes = int8_quantize(
        bundles["tflite-fp32"] / "model.tflite", out, calibration, input_name="image", input_range=(-1.0, 1.0)
    )
    assert notes["input_range"] == [-1.0, 1.0]
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(out)).get_signature_runner("serving_default").get_input_details()["image"]
    scale, zero_point = details["quantization"]
    assert scale * (-128 - zero_point) <= -1.0 + scale and scale * (127 - zero_point) >= 1.0 - scale
    assert scale == pytest.approx(2 / 255, rel=1e-3)  # one level per pixel value, nothing clipped
    backend = load_litert(out, BackendOptions(output_names=("embedding",)))
    black = np.full((1, 256, 256, 3), -1.0, np.float32)
    assert np.isfinite(backend.infer({"image": black})["embedding"]).all()


def test_int8_refuses_a_recipe_naming_an_unknown_op_or_no_calibration_images(bundles, tmp_path):
    from edgekit.export.tflite import int8_quantize

    model = bundles["tflite-fp32"] / "model.tflite"
    images = np.zeros((1, 256, 256, 3), np.float32)
    with pytest.raises(EdgekitError, match="'DEPTHWISE_CONV', which is not a TFLite op"):
        int8_quantize(
            model,
            tmp_path / "q.tflite",
            images,
            input_name="image",
            input_range=(-1.0, 1.0),
            float_ops=["DEPTHWISE_CONV"],
        )
    with pytest.raises(EdgekitError, match="needs calibration images"):
        int8_quantize(model, tmp_path / "q.tflite", images[:0], input_name="image", input_range=(-1.0, 1.0))
    assert not (tmp_path / "q.tflite").exists()


def test_litert_backend_resizes_the_batch_and_matches_single_images(bundles, brick):
    from edgekit.preprocess import prepare
    from edgekit.runtime.backends import BackendOptions, load_backend

    detector = edgekit.load(bundles["tflite-fp32"])
    batch = prepare(sorted((brick / "test" / "scratch").iterdir())[:3], detector.manifest.input)
    backend = load_backend(
        "litert", bundles["tflite-fp32"] / "model.tflite", BackendOptions(threads=2, output_names=("embedding",))
    )
    together = backend.infer({"image": batch})["embedding"]
    alone = np.concatenate([backend.infer({"image": batch[i : i + 1]})["embedding"] for i in range(3)])
    assert together.shape[0] == 3 and together.shape[2:] == (32, 32)  # stride-8 grid of a 256² input
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(EdgekitError, match=r"must be \(N, 256, 256, 3\)"):
        backend.infer({"image": batch.transpose(0, 3, 1, 2)})
    # a manifest name the file does not know still maps onto its only output
    renamed = load_backend(
        "litert", bundles["tflite-fp32"] / "model.tflite", BackendOptions(output_names=("features",))
    )
    np.testing.assert_array_equal(renamed.infer({"picture": batch[:1]})["features"], alone[:1])


def test_litert_backend_refuses_a_file_that_is_not_tflite(tmp_path):
    from edgekit.runtime.backends import BackendOptions, load_backend

    broken = tmp_path / "model.tflite"
    broken.write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(EdgekitError, match="LiteRT could not load model.tflite"):
        load_backend("litert", broken, BackendOptions())


def test_rpi4_tflite_bundle_runs_with_numpy_and_litert_only(bundles, brick):
    image = next((brick / "test" / "stain").iterdir())
    code = (
        "import sys, edgekit; d = edgekit.load(sys.argv[1]); p = d.predict(sys.argv[2]); "
        "host = ('torch', 'timm', 'litert_torch', 'ai_edge_quantizer', 'tensorflow', 'onnxruntime', 'openvino'); "
        "print(p.raw_score, p.is_anomalous, d.backend.name, [m for m in host if m in sys.modules])"
    )
    for name in ("tflite-fp32", "tflite-int8"):
        out = subprocess.run(
            [sys.executable, "-c", code, str(bundles[name]), str(image)], capture_output=True, text=True, check=True
        ).stdout.split()
        expected = edgekit.load(bundles[name]).predict(image).raw_score
        assert float(out[0]) == pytest.approx(expected, rel=1e-6)
        assert out[1:] == ["True", "litert", "[]"]


def test_a_converted_file_litert_cannot_load_is_one_error_not_a_traceback(tmp_path):
    from edgekit.export.tflite import op_census

    broken = tmp_path / "network.tflite"
    broken.write_bytes(b"TFL3" + bytes(64))
    with pytest.raises(EdgekitError, match="LiteRT cannot run the converted network.tflite") as caught:
        op_census(broken)
    assert "\n" not in str(caught.value)


def test_litert_backend_runs_image_by_image_when_a_graph_pins_its_batch_to_1(tmp_path):
    """litert-torch writes some reductions as a RESHAPE to a fixed batch-1 shape; such a graph
    resizes without complaint and would give one result for N images."""
    import torch

    from edgekit.export.tflite import torch_to_tflite
    from edgekit.runtime.backends import BackendOptions, load_backend

    class StackedMean(torch.nn.Module):  # torch.stack is written as a batch-1 RESHAPE
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return torch.stack([image[:, :1], image[:, 1:2]], dim=1).mean(dim=1)

    path = torch_to_tflite(
        StackedMean().eval(),
        torch.zeros(1, 3, 8, 8),
        tmp_path / "m.tflite",
        input_name="image",
        output_names=("anomaly_map",),
        layout="NHWC",
    )
    batch = np.random.default_rng(0).random((3, 8, 8, 3)).astype(np.float32)
    out = load_backend("litert", path, BackendOptions(output_names=("anomaly_map",))).infer({"image": batch})
    np.testing.assert_allclose(out["anomaly_map"], batch[..., :2].mean(axis=3)[:, None], rtol=1e-6)
