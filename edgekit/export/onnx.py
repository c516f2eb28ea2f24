"""PyTorch → ONNX, the first step of every export."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from edgekit.errors import EdgekitError, UnsupportedOp

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.export.job import Converted, ExportJob

OPSET = 17


def torch_to_onnx(
    module, example, path: Path, *, input_name: str, output_names: Sequence[str], dynamic_batch: bool = True
) -> Path:
    """Trace ``module`` on ``example`` and write a single-file ONNX model (opset 17)."""
    import torch

    axes = {name: {0: "batch"} for name in (input_name, *output_names)} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its own deprecation
        try:
            torch.onnx.export(
                module.eval(),
                (example,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=[input_name],
                output_names=list(output_names),
                dynamic_axes=axes,
            )
        except Exception as exc:  # torch raises many types here; name the op if it says one
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            named = re.search(r"operator '([\w:.]+)'", first)
            if named:
                raise UnsupportedOp(named.group(1), f"the ONNX exporter (opset {OPSET})") from None
            raise EdgekitError(f"ONNX export failed: {first}") from None
    return Path(path)


def convert(job: "ExportJob") -> "Converted":
    """The ONNX format: the float model as it is (fp32), or int8 (QDQ) with NNCF."""
    import shutil

    import onnx

    from edgekit.export.job import Converted

    if job.precision not in ("fp32", "int8"):
        raise EdgekitError(f"ONNX export offers fp32 and int8, not {job.precision!r}")
    onnx.checker.check_model(str(job.onnx_path))
    target = Path(job.out_dir) / "model.onnx"
    if job.precision == "fp32":
        shutil.copyfile(job.onnx_path, target)
        return Converted(files=[target], notes={"converter": f"torch.onnx (TorchScript) opset {OPSET}"})
    from edgekit.export.quantize import quantize_onnx

    quantized, quantization = quantize_onnx(onnx.load(str(job.onnx_path)), job)
    onnx.save(quantized, str(target))
    return Converted(
        files=[target],
        notes={
            "converter": f"torch.onnx (TorchScript) opset {OPSET}, then nncf.quantize (QuantizeLinear/DequantizeLinear)",
            "quantization": quantization,
            "compute_precision": "int8 where QuantizeLinear/DequantizeLinear pairs surround an op "
            "(onnxruntime fuses them into int8 kernels), float32 elsewhere",
        },
    )
