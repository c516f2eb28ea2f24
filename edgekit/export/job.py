"""What every format converter receives and returns: one small, explicit contract.

A converter is ``convert(job: ExportJob) -> Converted``, one file per format (openvino.py,
onnx.py, ...), registered by name in ``FORMATS`` in pipeline.py. It writes into ``job.out_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edgekit.bundle import HeadSpec
from edgekit.preprocess import InputSpec
from edgekit.targets import FormatSpec, Target


@dataclass(frozen=True)
class ExportOptions:
    """The user's export choices; None means "the target's / recipe's default"."""

    format: Optional[str] = None  # one of the target's formats (default: its default_format)
    precision: Optional[str] = None
    calibration_images: Optional[int] = None  # how many training normals to calibrate on
    max_drop: Optional[float] = None  # accuracy-controlled quantization: allowed metric drop
    painted_calibration: Optional[float] = None  # share of calibration normals also painted (default: recipe's)
    bank_dims: Optional[str] = None  # PatchCore: "full", "auto" or an integer as text
    bank_dtype: Optional[str] = None  # PatchCore: float32 | float16 | int8
    bank_size: Optional[int] = None  # PatchCore: re-select the bank down to this many rows
    threshold_rule: str = "bound"  # edgekit.runtime.decision.ThresholdRule, on the held-out normals
    fit: Optional[str] = None  # edgekit.preprocess.FITS (default: the run's)
    roi: Optional[tuple[int, ...]] = None  # x, y, width, height (default: the run's)


@dataclass
class ExportJob:
    target: Target
    format: FormatSpec
    precision: str
    network: Any  # the float torch.nn.Module, eval mode
    example: Any  # torch.Tensor (1, C, H, W)
    onnx_path: Optional[Path]  # float ONNX of ``network`` (opset 17, dynamic batch); None for TFLite
    input_name: str
    output_names: tuple[str, ...]
    calibration: np.ndarray  # prepared batch of TRAINING normals (bank images), never test images
    validation: np.ndarray  # prepared held-out normals (for accuracy-controlled quantization)
    recipe: dict[str, Any]  # calibration/<family>.toml
    options: ExportOptions
    out_dir: Path
    #: the bundle's numpy head as network outputs -> raw image scores (--max-drop validates with it)
    head_score: Callable[[np.ndarray], np.ndarray]
    input_spec: Optional[InputSpec] = None  # the bundle's pre-processing (mean/std give the input's range)


@dataclass
class Converted:
    files: list[Path]  # main file first (what the runtime opens)
    notes: dict[str, Any] = field(default_factory=dict)  # goes into manifest.export


@dataclass
class FamilyParts:
    network: Any  # torch.nn.Module to export
    head: HeadSpec
    arrays: dict[str, np.ndarray]  # bundle-relative .npy path -> array
    notes: dict[str, Any] = field(default_factory=dict)
    output_name: str = "embedding"  # what the graph outputs: "embedding" (a head reads it) or "anomaly_map"


def count_flops(network: Any, example: Any) -> tuple[int, list[int]]:
    """FLOPs of one forward pass (convolutions and matrix products) and the output's shape."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        output = network(example)
    return int(counter.get_total_flops()), [int(d) for d in output.shape]
