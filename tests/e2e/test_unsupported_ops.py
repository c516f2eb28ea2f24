"""An op a target's converter cannot express: one error line naming the op, the target and the way out."""

from __future__ import annotations

import pytest
from cli_helpers import assert_one_error_line
from click.testing import CliRunner

from edgekit.errors import EdgekitError


class _Tail:
    """A family whose network ends in an op chosen by the test (the PatchCore network + that op)."""

    op = None

    @classmethod
    def parts(cls, run, options):
        import torch
        from torch import nn

        from edgekit.families.patchcore.export import patchcore_parts

        class WithOp(nn.Module):
            def __init__(self, network: nn.Module) -> None:
                super().__init__()
                self.network = network

            def forward(self, image: torch.Tensor) -> torch.Tensor:
                return cls.op(self.network(image))

        parts = patchcore_parts(run, options)
        parts.network = WithOp(parts.network).eval()
        return parts


@pytest.fixture
def family_with(monkeypatch):
    from edgekit.export import pipeline

    def use(op):
        _Tail.op = staticmethod(op)
        monkeypatch.setattr(pipeline, "family_parts", lambda run, options: _Tail.parts(run, options))

    return use


@pytest.mark.e2e
def test_an_op_litert_lacks_names_op_and_target_and_suggests_onnx(patchcore_run, family_with, tmp_path):
    import torch.nn.functional as F

    from edgekit.export.pipeline import export_run

    family_with(lambda x: F.adaptive_max_pool2d(x, 4))  # ONNX has it (MaxPool); litert-torch has no lowering
    with pytest.raises(EdgekitError) as caught:
        export_run(patchcore_run.path, tmp_path / "b", target="rpi4")
    assert str(caught.value) == (
        "cannot export patchcore for target rpi4 (tflite): op aten.adaptive_max_pool2d.default "
        "is not supported by litert-torch (it has no TFLite lowering for it); try --format onnx"
    )
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_an_op_the_onnx_exporter_lacks_is_named_for_an_openvino_target_on_the_cli(patchcore_run, family_with, tmp_path):
    from edgekit.cli import cli

    family_with(lambda x: x.median(dim=3, keepdim=True).values)
    result = CliRunner().invoke(
        cli, ["export", str(patchcore_run.path), "--target", "x86", "--out", str(tmp_path / "b")]
    )
    assert_one_error_line(
        result,
        "error: cannot export patchcore for target x86 (openvino): op aten::median is not "
        "supported by the ONNX exporter (opset 17)",
    )
    assert list(tmp_path.iterdir()) == []


def test_an_op_openvino_cannot_read_is_named(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from edgekit.errors import UnsupportedOp
    from edgekit.export.openvino import read_onnx

    node = helper.make_node("Frobnicate", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    with pytest.raises(UnsupportedOp, match=r"^op Frobnicate-17 is not supported by OpenVINO's ONNX front end$"):
        read_onnx(tmp_path / "m.onnx")
