"""PyTorch → ONNX, the first step of every export."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

from edgekit.errors import EdgekitError

OPSET = 17


def torch_to_onnx(module, example, path: Path, *, input_name: str, output_names: Sequence[str],
                  dynamic_batch: bool = True) -> Path:
    """Trace ``module`` on ``example`` and write a single-file ONNX model (opset 17)."""
    import torch

    axes = {name: {0: "batch"} for name in (input_name, *output_names)} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its own deprecation
        try:
            torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=[input_name], output_names=list(output_names), dynamic_axes=axes)
        except Exception as exc:  # torch raises many types here; name the op if it says one
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EdgekitError(f"ONNX export failed: {first}") from None
    return Path(path)


def onnx_to_onnx(onnx_path: Path, out_dir: Path) -> list[Path]:
    """The ONNX format needs no conversion: copy the checked model into place."""
    import shutil

    import onnx

    onnx.checker.check_model(str(onnx_path))
    target = Path(out_dir) / "model.onnx"
    shutil.copyfile(onnx_path, target)
    return [target]
