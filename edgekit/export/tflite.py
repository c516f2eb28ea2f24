"""PyTorch → TFLite with litert-torch (no TensorFlow), quantized with ai-edge-quantizer.

The .tflite file has one signature, ``serving_default``, whose input and output keys are the
bundle's tensor names (``image`` → ``embedding``), so the device maps the manifest's names onto
the interpreter's tensors by name. The input takes the target's layout (NHWC for the Raspberry Pi
targets: TFLite's own layout, so the graph needs no input transpose). The batch is fixed at 1 in
the file; the LiteRT backend resizes the input when it is given another batch.

Precisions:
- fp32: the converted float graph as it is.
- fp16: the weights of every convolution stored as float16 (ai-edge-quantizer float casting);
  activations and arithmetic stay float32 (XNNPACK widens the weights when it loads them).
- int8: by default static int8 (``[tflite] int8_scheme = "static"`` in the family's recipe):
  int8 per-channel weights and int8 per-tensor activations whose ranges come from the
  calibration images (training normals only; ai-edge-quantizer's running average of each image's
  min/max). The recipe's ``float_ops`` stay float. The input's range is not calibrated but set to
  the whole range the pre-processing can produce, so a defect darker or brighter than every
  training normal is not clipped at the door (this needs the job's input spec; without it the
  calibration images' min/max is used and the manifest says so). ``"dynamic"`` keeps activations
  float (quantized per call at run time).

``--max-drop D`` (int8): ai-edge-quantizer has no accuracy control, so the export does NNCF's job by
op type. It calibrates once, then, while the score agreement on the held-out normals and painted
defects (the metric of NNCF's ``--max-drop``, ``edgekit.export.quantize.score_agreement``) is more
than ``D`` below 1, it tries each op type still computing in int8 (and the file's int8 input and
output) float on its own and keeps the one that restores the most agreement. Every round is
recorded in the manifest.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

import numpy as np

from edgekit.errors import EdgekitError, UnsupportedOp

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.export.job import Converted, ExportJob

SIGNATURE = "serving_default"
MODEL_FILE = "model.tflite"
#: ops whose weights float casting can store as float16 (ai-edge-quantizer 0.10)
_FP16_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "CONV_2D_TRANSPOSE")
_INT8_SCHEMES = ("static", "dynamic")


def torch_to_tflite(
    module, example, path: Path, *, input_name: str, output_names: Sequence[str], layout: str = "NCHW"
) -> Path:
    """Convert ``module`` (NCHW in, one tensor or a tuple out) to a float32 .tflite at ``path``.

    ``example`` is the NCHW example input; with ``layout="NHWC"`` the file takes NHWC input.
    """
    try:
        import litert_torch
    except ImportError:
        raise EdgekitError("exporting TFLite needs litert-torch: pip install 'edgekit-anomaly[train]'") from None
    if layout not in ("NCHW", "NHWC"):
        raise EdgekitError(f"TFLite export supports layouts NCHW and NHWC, not {layout!r}")
    wrapped = _named_io(module.eval(), input_layout=layout, output_names=tuple(output_names))
    sample = example.permute(0, 2, 3, 1).contiguous() if layout == "NHWC" else example
    with _quiet("litert-torch conversion"):
        edge_model = litert_torch.convert(wrapped, sample_kwargs={input_name: sample})
        edge_model.export(str(path))
    return Path(path)


def _named_io(network, *, input_layout: str, output_names: tuple[str, ...]):
    """``network`` taking its input in ``input_layout`` and returning ``{output name: tensor}``.

    The class is defined on first use so that importing this module does not import torch.
    """
    from torch import nn

    class NamedIO(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, image):
            if input_layout == "NHWC":
                image = image.permute(0, 3, 1, 2)
            outputs = self.network(image)
            if not isinstance(outputs, (tuple, list)):
                outputs = (outputs,)
            if len(outputs) != len(output_names):
                raise ValueError(f"the network gives {len(outputs)} outputs for names {output_names}")
            return dict(zip(output_names, outputs))

    return NamedIO().eval()


def float16_weights(float_model: Path, path: Path) -> dict[str, Any]:
    """Store every convolution's weights as float16; returns notes on what changed."""
    from ai_edge_quantizer import quantizer

    engine = quantizer.Quantizer(str(float_model))
    for op in _FP16_WEIGHT_OPS:
        engine.add_weight_only_config(regex=".*", operation_name=op, num_bits=16, algorithm_key="float_casting")
    with _quiet("ai-edge-quantizer float16"):
        result = engine.quantize(enable_progress_report=False)
    Path(path).write_bytes(bytes(result.quantized_model))
    census = op_census(path)
    return {
        "scheme": "float16 weights (ai-edge-quantizer float_casting)",
        "quantized": "weights of " + _ops_phrase(census["float16_weights"]) + " stored as float16",
        "float": "all activations and arithmetic: float32 (weights are widened when the model loads)",
        "ops": census["ops"],
    }


@dataclass(frozen=True)
class AccuracyControl:
    """``--max-drop`` for TFLite: ``agreement(path)`` scores a quantized file against the float
    model (1.0: the same scores); op types return to float until it is at least ``1 - max_drop``."""

    agreement: Callable[[Path], float]
    max_drop: float


def int8_quantize(
    float_model: Path,
    path: Path,
    calibration: np.ndarray,
    *,
    input_name: str,
    input_range: tuple[float, float],
    scheme: str = "static",
    float_ops: Sequence[str] = (),
    control: Optional[AccuracyControl] = None,
) -> dict[str, Any]:
    """Quantize ``float_model`` to int8 with ai-edge-quantizer; returns notes on what changed.

    ``calibration`` is a batch in the file's input layout, training normals (some with defects
    painted on, by the recipe). ``input_range`` (low, high) is the range the pre-processing can
    produce; the input is quantized over it. ``float_ops`` names TFLite ops (e.g.
    ``RESIZE_BILINEAR``) that stay float; ``control`` returns more to float (module docstring).
    """
    from ai_edge_quantizer import qtyping

    unknown = sorted(set(float_ops) - {op.value for op in qtyping.TFLOperationName})
    if unknown:
        raise EdgekitError(
            f"calibration recipe: [tflite] float_ops names {unknown[0]!r}, which is not a TFLite op "
            f"ai-edge-quantizer knows (e.g. DEPTHWISE_CONV_2D, RESIZE_BILINEAR)"
        )
    if scheme not in _INT8_SCHEMES:
        raise EdgekitError(
            f"calibration recipe: [tflite] int8_scheme must be one of {', '.join(_INT8_SCHEMES)}, not {scheme!r}"
        )
    calibration_result = None
    if scheme == "static":
        if len(calibration) == 0:
            raise EdgekitError("int8 TFLite export needs calibration images (training normals); none were given")
        samples = [
            {input_name: np.ascontiguousarray(calibration[i : i + 1], np.float32)} for i in range(len(calibration))
        ]
        with _quiet("ai-edge-quantizer calibration"):
            calibration_result = _engine(float_model, scheme, float_ops).calibrate(
                {SIGNATURE: samples}, num_threads=max(1, os.cpu_count() or 1)
            )
        tensor = _signature_tensor_name(float_model, input_name)
        bounds = calibration_result.get(tensor)
        if bounds is None:
            raise EdgekitError(f"ai-edge-quantizer calibration did not see the input tensor {tensor!r}")
        seen = (float(np.min(bounds["min"])), float(np.max(bounds["max"])))
        bounds["min"] = np.full_like(bounds["min"], input_range[0])
        bounds["max"] = np.full_like(bounds["max"], input_range[1])
    kept = list(float_ops)
    _quantize_to(path, float_model, scheme, kept, calibration_result)
    control_notes = (
        None if control is None else _return_to_float(path, float_model, scheme, kept, calibration_result, control)
    )
    census = op_census(path)
    notes: dict[str, Any] = {"ops": census["ops"], "float_ops_requested": list(float_ops)}
    if control_notes is not None:
        notes["accuracy_control"] = control_notes
    if scheme == "static":
        notes.update(
            {
                "scheme": "static int8 (ai-edge-quantizer static_wi8_ai8, running-average min/max ranges)",
                "quantized": (
                    "int8 per-channel weights and int8 per-tensor activations in " + _ops_phrase(census["int8"])
                ),
                "float": _ops_phrase(census["float"]) or "nothing inside the network",
                "calibration_images": int(len(calibration)),
                "input_range": [float(input_range[0]), float(input_range[1])],
                "input_range_calibrated": [round(seen[0], 6), round(seen[1], 6)],  # what calibration alone gave
                "io": census["io"],
            }
        )
    else:
        notes.update(
            {
                "scheme": "dynamic range int8 (ai-edge-quantizer dynamic_wi8_afp32)",
                "quantized": "int8 per-channel weights of "
                + _ops_phrase(census["int8_weights"])
                + "; their float32 inputs are quantized per call at run time",
                "float": "activations between ops and " + (_ops_phrase(census["float"]) or "no op"),
                "io": census["io"],
            }
        )
    return notes


def _engine(float_model: Path, scheme: str, float_ops: Sequence[str]) -> Any:
    """An ai-edge-quantizer Quantizer with the scheme's recipe and ``float_ops`` left float."""
    from ai_edge_quantizer import quantizer, recipe

    engine = quantizer.Quantizer(
        str(float_model), recipe.static_wi8_ai8() if scheme == "static" else recipe.dynamic_wi8_afp32()
    )
    for op in float_ops:
        engine.update_quantization_recipe(regex=".*", operation_name=op, algorithm_key="no_quantize")
    return engine


def _quantize_to(path: Path, float_model: Path, scheme: str, float_ops: Sequence[str], calibration: Any) -> None:
    """Write ``float_model`` quantized with ``float_ops`` float to ``path`` (one calibration serves
    every set of float ops: leaving an op float only drops ranges it would have used)."""
    with _quiet("ai-edge-quantizer int8"):
        result = _engine(float_model, scheme, float_ops).quantize(calibration, enable_progress_report=False)
    Path(path).write_bytes(bytes(result.quantized_model))


def _return_to_float(
    path: Path, float_model: Path, scheme: str, kept: list[str], calibration: Any, control: AccuracyControl
) -> dict[str, Any]:
    """Greedy by op type: while the agreement of ``path`` misses ``1 - max_drop``, the int8 op type
    whose return to float restores the most joins ``kept`` (which it extends); ``path`` ends as the
    chosen file. Refuses when every op type is float and the agreement is still short."""
    goal = 1.0 - control.max_drop
    agreement = control.agreement(path)
    rounds: list[dict[str, Any]] = [{"float_ops": list(kept), "agreement": round(agreement, 6)}]
    trial = path.with_name(f".trial-{path.name}")
    try:
        while agreement < goal - 1e-12:
            census = op_census(path)
            candidates = sorted(census["int8"]) + census["int8_io"]
            if not candidates:
                raise EdgekitError(
                    f"--max-drop {control.max_drop:g}: with every op type, the input and the output float, the "
                    f"TFLite model's score agreement is {agreement:.4f}, below {goal:.4f}; export fp16 or fp32"
                )
            tried, best, chosen = {}, None, b""
            for op in candidates:
                _quantize_to(trial, float_model, scheme, [*kept, op], calibration)
                tried[op] = control.agreement(trial)
                if best is None or (tried[op], op) > (tried[best], best):
                    best, chosen = op, trial.read_bytes()  # kept, not quantized again
            kept.append(best)
            path.write_bytes(chosen)
            agreement = tried[best]
            rounds.append(
                {"tried": {op: round(a, 6) for op, a in tried.items()}, "float": best, "agreement": round(agreement, 6)}
            )
    finally:
        trial.unlink(missing_ok=True)
    return {
        "method": "op types return to float one at a time, the one restoring the most score agreement first, "
        f"until the agreement on held-out normals and painted defects is at least 1 - {control.max_drop:g}",
        "max_drop": control.max_drop,
        "float_ops": list(kept),
        "agreement": round(agreement, 6),
        "rounds": rounds,
    }


def op_census(path: Path) -> dict[str, Any]:
    """Which ops of a .tflite compute in int8 and which in float, and its input/output types."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as exc:  # e.g. an op or op version LiteRT's kernels lack
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgekitError(
            f"LiteRT cannot run the converted {path.name}: {first} (keep that op float in "
            f"the calibration recipe's [tflite] float_ops, or choose another precision)"
        ) from None
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    ops: Counter = Counter()
    int8_ops: Counter = Counter()
    float_ops: Counter = Counter()
    int8_weights: Counter = Counter()
    float16_weights: Counter = Counter()
    bookkeeping = {"QUANTIZE", "DEQUANTIZE"}
    dequantized_from: dict[int, Any] = {}
    for op in interpreter._get_ops_details():  # the only public-enough view of the graph
        name = op["op_name"]
        ops[name] += 1
        if name == "DEQUANTIZE":
            for out in op["outputs"]:
                dequantized_from[int(out)] = details[int(op["inputs"][0])]["dtype"]
            continue
        if name in bookkeeping:
            continue
        out_types = {details[int(i)]["dtype"] for i in op["outputs"] if int(i) in details}
        (int8_ops if np.dtype(np.int8) in {np.dtype(t) for t in out_types} else float_ops)[name] += 1
        weight_types = {np.dtype(details[int(i)]["dtype"]) for i in op["inputs"][1:2] if int(i) in details}
        weight_types |= {np.dtype(dequantized_from[int(i)]) for i in op["inputs"][1:2] if int(i) in dequantized_from}
        if np.dtype(np.int8) in weight_types:
            int8_weights[name] += 1
        if np.dtype(np.float16) in weight_types:
            float16_weights[name] += 1
    runner = interpreter.get_signature_runner(SIGNATURE)
    inputs, outputs = runner.get_input_details(), runner.get_output_details()
    io = {key: np.dtype(value["dtype"]).name for key, value in {**inputs, **outputs}.items()}
    int8_io = [  # ai-edge-quantizer's names for the file's input and output quantization
        side
        for side, tensors in (("INPUT", inputs), ("OUTPUT", outputs))
        if any(np.dtype(t["dtype"]) == np.int8 for t in tensors.values())
    ]
    return {
        "ops": dict(ops),
        "int8": dict(int8_ops),
        "float": dict(float_ops),
        "int8_weights": dict(int8_weights),
        "float16_weights": dict(float16_weights),
        "io": io,
        "int8_io": int8_io,
    }


def _ops_phrase(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))


def _signature_tensor_name(path: Path, key: str) -> str:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner(SIGNATURE)
    return runner.get_input_details()[key]["name"]


def input_range(mean: Sequence[float], std: Sequence[float]) -> tuple[float, float]:
    """The lowest and highest value :func:`edgekit.preprocess.prepare` can produce (pixels 0..255)."""
    low = [(0.0 - m) / s for m, s in zip(mean, std)]
    high = [(1.0 - m) / s for m, s in zip(mean, std)]
    return float(min(low)), float(max(high))


def convert(job: "ExportJob") -> "Converted":
    """The TFLite format at the job's precision (fp32, fp16 or int8)."""
    from edgekit.export.job import Converted

    if job.precision not in ("fp32", "fp16", "int8"):
        raise EdgekitError(f"TFLite export offers fp32, fp16 and int8, not {job.precision}")
    layout = job.format.layout
    target = Path(job.out_dir) / MODEL_FILE
    float_path = target if job.precision == "fp32" else Path(job.out_dir) / "float.tflite"
    torch_to_tflite(
        job.network, job.example, float_path, input_name=job.input_name, output_names=job.output_names, layout=layout
    )
    from litert_torch import __version__ as converter_version

    notes: dict[str, Any] = {
        "converter": f"litert-torch {converter_version} (torch.export, no TensorFlow)",
        "tflite_input_layout": layout,
        "tflite_signature": SIGNATURE,
    }
    if job.precision == "fp32":
        notes["quantization"] = {"scheme": "none", "float": "everything (float32)"}
        return Converted(files=[target], notes=notes)
    try:
        if job.precision == "fp16":
            notes["quantization"] = float16_weights(float_path, target)
        else:
            settings = dict(job.recipe.get("tflite", {}))
            calibration = job.calibration.transpose(0, 2, 3, 1) if layout == "NHWC" else job.calibration
            bounds, source = _input_range(job, calibration)
            notes["quantization"] = int8_quantize(
                float_path,
                target,
                calibration,
                input_name=job.input_name,
                input_range=bounds,
                scheme=str(settings.get("int8_scheme", "static")),
                float_ops=tuple(settings.get("float_ops", ())),
                control=None if job.options.max_drop is None else _accuracy_control(job, float_path),
            )
            notes["quantization"]["input_range_source"] = source
    finally:
        float_path.unlink(missing_ok=True)
    return Converted(files=[target], notes=notes)


def _accuracy_control(job: "ExportJob", float_path: Path) -> AccuracyControl:
    """The score agreement of a quantized file with the float one on the job's validation images
    (held-out normals, plain and painted), through the bundle's own head."""
    from edgekit.export.quantize import score_agreement
    from edgekit.runtime.backends import BackendOptions
    from edgekit.runtime.backends.litert import load

    max_drop = float(job.options.max_drop)
    if not 0 < max_drop < 1:
        raise EdgekitError(f"--max-drop must be between 0 and 1 (a drop of score agreement), not {max_drop}")
    if len(job.validation) < 2:
        raise EdgekitError("--max-drop needs at least 2 held-out normals and painted images to validate on")
    images = job.validation.transpose(0, 2, 3, 1) if job.format.layout == "NHWC" else job.validation
    output = job.output_names[0]

    def scores(path: Path) -> np.ndarray:
        backend = load(path, BackendOptions(output_names=job.output_names))
        outputs = [backend.infer({job.input_name: images[i : i + 8]})[output] for i in range(0, len(images), 8)]
        return np.asarray(job.head_score(np.concatenate(outputs)), dtype=np.float64)

    reference = scores(float_path)
    return AccuracyControl(lambda path: score_agreement(reference, scores(path))[0], max_drop)


def _input_range(job: "ExportJob", calibration: np.ndarray) -> tuple[tuple[float, float], str]:
    """The int8 input range: the pre-processing's full range when the job says its mean/std.

    Falls back to the calibration images' own min/max (then a defect darker or brighter than every
    training normal is clipped at the input; the manifest says which one was used).
    """
    spec = job.input_spec
    if spec is not None:
        return input_range(spec.mean, spec.std), "pre-processing (pixels 0..255 through mean/std)"
    return (float(calibration.min()), float(calibration.max())), "calibration images (min/max)"


@contextlib.contextmanager
def _quiet(stage: str) -> Iterator[None]:
    """Silence the converters' progress bars and C++ logs; a failure becomes one EdgekitError line.

    litert-torch and ai-edge-quantizer print to the process's file descriptors 1 and 2 (rich,
    tqdm, absl), which Python-level redirection cannot catch, so the descriptors are pointed at a
    temporary file for the duration; an exception becomes one line naming the stage.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        failure = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        except EdgekitError:
            raise
        except Exception as exc:  # the converters raise many types; report the first line
            failure = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        if failure is not None:
            named = re.search(r"Lowering not found: (\S+)", failure)
            if named:
                raise UnsupportedOp(named.group(1), "litert-torch (it has no TFLite lowering for it)") from None
            raise EdgekitError(f"{stage} failed: {failure}") from None
