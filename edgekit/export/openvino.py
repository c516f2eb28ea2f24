"""ONNX → OpenVINO IR (``model.xml`` + ``model.bin``)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.errors import EdgekitError

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.export.job import Converted, ExportJob


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


def convert(job: "ExportJob") -> "Converted":
    """The OpenVINO format at the job's precision."""
    from edgekit.export.job import Converted

    if job.precision != "fp32":
        raise EdgekitError(f"OpenVINO export offers fp32 here, not {job.precision}")
    files = onnx_to_openvino(job.onnx_path, job.out_dir, compress_to_fp16=False)
    return Converted(files=files, notes={"converter": "openvino.convert_model from ONNX, fp32 weights"})
