"""Each runtime keeps predicting after a loaded archive's extracted copy is removed (networks made with onnx,
OpenVINO's converter and torch; the rest of the archive checks are tests/unit/test_bundle_caps.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fake_bundles import SPEC, save_knn
from test_bundle_caps import IMAGE

import edgekit


def _conv_pool_weights() -> np.ndarray:
    """A 4×4 stride-4 convolution that averages each channel: the fake backend's pooling, as a network."""
    weights = np.zeros((3, 3, 4, 4), np.float32)
    for channel in range(3):
        weights[channel, channel] = 1 / 16
    return weights


def _onnx_network(path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper, save

    node = helper.make_node("Conv", ["image", "weights"], ["embedding"], kernel_shape=[4, 4], strides=[4, 4])
    graph = helper.make_graph(
        [node],
        "pool",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3, 4, 4])],
        initializer=[numpy_helper.from_array(_conv_pool_weights(), "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))
    return path


def _network_files(runtime: str, work: Path) -> tuple[str, dict, str]:
    """(format, bundle files, layout) of the pooling network for ``runtime``."""
    onnx_path = _onnx_network(work / "pool.onnx")
    if runtime == "onnxruntime":
        return "onnx", {"model.onnx": onnx_path}, "NCHW"
    if runtime == "openvino":
        import openvino as ov

        ov.save_model(ov.convert_model(str(onnx_path)), str(work / "model.xml"), compress_to_fp16=False)
        return "openvino", {"model.xml": work / "model.xml", "model.bin": work / "model.bin"}, "NCHW"
    import torch

    from edgekit.export.tflite import torch_to_tflite

    conv = torch.nn.Conv2d(3, 3, 4, stride=4, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(_conv_pool_weights()))
    path = torch_to_tflite(
        conv.eval(),
        torch.zeros(1, 3, 16, 16),
        work / "model.tflite",
        input_name="image",
        output_names=("embedding",),
        layout="NHWC",
    )
    return "tflite", {"model.tflite": path}, "NHWC"


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "litert"])
def test_each_runtime_keeps_predicting_after_the_extracted_copy_is_removed(
    runtime: str, tmp_path: Path, private_temp: Path
) -> None:
    """The runtimes read (or map) their network at load, so closing early is safe on Linux."""
    work = tmp_path / "work"
    work.mkdir()
    fmt, files, layout = _network_files(runtime, work)
    spec = replace(SPEC, layout=layout)
    archive = save_knn(tmp_path / f"{runtime}.edgekit", spec=spec, runtime=runtime, fmt=fmt, files=files)
    detector = edgekit.load(archive)
    before = detector.predict(IMAGE)
    detector.close()
    assert list(private_temp.glob("edgekit-bundle-*")) == []  # (the TFLite converter leaves its own cache)
    for _ in range(3):
        after = detector.predict(IMAGE)
        assert after.raw_score == pytest.approx(before.raw_score, rel=1e-6)
    expected = save_knn(tmp_path / "fake.edgekit")
    with edgekit.load(expected) as fake:  # the same pooling on the fake runtime: the same score
        assert fake.predict(IMAGE).raw_score == pytest.approx(before.raw_score, rel=1e-4)
