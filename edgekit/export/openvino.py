"""ONNX → OpenVINO IR (``model.xml`` + ``model.bin``)."""
from __future__ import annotations

from pathlib import Path

from edgekit.errors import EdgekitError


def onnx_to_openvino(onnx_path: Path, out_dir: Path, *, compress_to_fp16: bool = False) -> list[Path]:
    """Convert with ``openvino.convert_model``; weights stay fp32 unless asked otherwise.

    (``openvino.save_model`` compresses weights to fp16 by default; an fp32 bundle must not.)
    """
    try:
        import openvino as ov
    except ImportError:
        raise EdgekitError("exporting for OpenVINO needs openvino: pip install 'edgekit[openvino]'") from None
    xml = Path(out_dir) / "model.xml"
    try:
        model = ov.convert_model(str(onnx_path))
        ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgekitError(f"OpenVINO conversion failed: {first}") from None
    return [xml, xml.with_suffix(".bin")]
