"""ONNX → OpenVINO IR (``model.xml`` + ``model.bin``) at fp32, fp16 (weights) or int8 (NNCF)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from edgekit.errors import EdgekitError, UnsupportedOp, reason

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.export.job import Converted, ExportJob

#: What each precision means for the IR and for the arithmetic, written into the manifest.
_COMPUTE = {
    "CPU": {
        "fp32": "f32 (INFERENCE_PRECISION_HINT f32)",
        "fp16": "f32: the CPU plugin expands the fp16 weights and computes with the f32 hint, so scores match "
        "the host's to float32 rounding (an f16 hint would mean bf16 on many x86 CPUs and drift by ~4 %)",
        "int8": "int8 convolutions where NNCF placed quantizers, f32 (hint f32) everywhere else",
    },
    "GPU": {
        "fp16": "f16 (the GPU plugin's default inference precision)",
        "int8": "int8 convolutions where NNCF placed quantizers, f16 everywhere else",
    },
}


def _openvino():
    try:
        import openvino as ov
    except ImportError:
        raise EdgekitError("exporting for OpenVINO needs openvino: pip install 'edgekit-anomaly[openvino]'") from None
    return ov


def read_onnx(onnx_path: Path) -> Any:
    """The ONNX file as an ``ov.Model`` (float)."""
    ov = _openvino()
    try:
        return ov.convert_model(str(onnx_path))
    except Exception as exc:  # OpConversionFailure, RuntimeError, ...
        named = re.search(r"No conversion rule found for operations: ([^\n]+)", str(exc))
        if named:
            raise UnsupportedOp(named.group(1).strip(), "OpenVINO's ONNX front end") from None
        raise EdgekitError(f"OpenVINO conversion failed: {reason(exc)}") from None


#: a node name OpenVINO made from its process-wide counter ("Constant_11647", "Reshape_2666" on a folded
#: constant); torch's exporter names a few top-level ONNX nodes the same way ("Constant_240")
_COUNTER_NAME = re.compile(r"([A-Za-z][A-Za-z0-9]*)_[0-9]+")


def stable_names(model: Any) -> None:
    """Rename counter-named nodes after their place in the graph (``Constant_11647`` → ``Constant_6``).

    OpenVINO names the nodes it creates from one counter per process, so the same ONNX converted
    twice (or after another model) gave a different ``model.xml``; ordered by the graph, the names
    depend on the graph alone. Inputs keep their names (the runtime finds them by name).
    """
    for index, node in enumerate(model.get_ordered_ops()):
        named = _COUNTER_NAME.fullmatch(node.get_friendly_name())
        if named and node.get_type_name() != "Parameter":
            node.set_friendly_name(f"{named.group(1)}_{index}")


def save_ir(model: Any, out_dir: Path, *, compress_to_fp16: bool) -> list[Path]:
    """Write ``model.xml`` + ``model.bin``; weights stay as they are unless ``compress_to_fp16``.

    (``openvino.save_model`` compresses weights to fp16 by default; an fp32 bundle must not.)
    Node names are made independent of the process first (:func:`stable_names`).
    """
    ov = _openvino()
    xml = Path(out_dir) / "model.xml"
    stable_names(model)
    try:
        ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    except RuntimeError as exc:
        raise EdgekitError(f"OpenVINO could not save the IR: {reason(exc)}") from None
    return [xml, xml.with_suffix(".bin")]


def onnx_to_openvino(onnx_path: Path, out_dir: Path, *, compress_to_fp16: bool = False) -> list[Path]:
    """Convert with ``openvino.convert_model``; weights stay fp32 unless asked otherwise."""
    return save_ir(read_onnx(onnx_path), out_dir, compress_to_fp16=compress_to_fp16)


def threshold_fit_stand_in(device: str) -> Optional[dict[str, str]]:
    """Where to fit thresholds when ``device`` is absent on the exporting machine (None: on it).

    The export fits thresholds by running the exported IR on held-out normals. Without the
    target's device (an iGPU export on a build server) the same IR runs on this machine's CPU
    plugin with the f32 hint instead; the manifest records that and why.
    """
    ov = _openvino()
    kind = device.split(".")[0].split(":")[0]
    available = ov.Core().available_devices
    if kind in ("CPU", "AUTO", "MULTI", "HETERO") or any(d.startswith(kind) for d in available):
        return None
    return {
        "device": "CPU",
        "instead_of": device,
        "why": f"no OpenVINO {kind} device on the exporting machine (it has {', '.join(available) or 'none'}); "
        f"the same IR ran on the CPU plugin with the f32 hint. The {kind} plugin computes in f16, so "
        f"its raw scores can differ slightly from those the thresholds were fitted on; export on a "
        f"machine with the {kind} to fit them there",
    }


def convert(job: "ExportJob") -> "Converted":
    """The OpenVINO format at the job's precision: fp32, fp16 (weights) or int8 (NNCF PTQ)."""
    from edgekit.export.job import Converted

    device = job.target.device.split(".")[0]
    compute = _COMPUTE.get(device, {}).get(job.precision, "as the OpenVINO plugin for the device decides")
    if job.precision == "fp32":
        files = onnx_to_openvino(job.onnx_path, job.out_dir, compress_to_fp16=False)
        notes = {"converter": "openvino.convert_model from ONNX, fp32 weights"}
    elif job.precision == "fp16":
        files = onnx_to_openvino(job.onnx_path, job.out_dir, compress_to_fp16=True)
        notes = {"converter": "openvino.convert_model from ONNX, weights compressed to fp16 (compress_to_fp16)"}
    elif job.precision == "int8":
        from edgekit.export.quantize import quantize_openvino

        quantized, quantization = quantize_openvino(read_onnx(job.onnx_path), job)
        # the weights NNCF left float stay fp32 (exact on CPU); the GPU plugin converts them itself
        files = save_ir(quantized, job.out_dir, compress_to_fp16=False)
        notes = {"converter": "openvino.convert_model from ONNX, then nncf.quantize", "quantization": quantization}
    else:
        raise EdgekitError(f"OpenVINO export offers fp32, fp16 and int8, not {job.precision!r}")
    notes["compute_precision"] = f"{device}: {compute}"
    stand_in = threshold_fit_stand_in(job.target.device)
    if stand_in is not None:
        notes["threshold_fit"] = stand_in
    return Converted(files=files, notes=notes)
