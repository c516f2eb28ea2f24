"""Post-training int8 quantization of the exported network with NNCF, for OpenVINO IR and ONNX.

Only the network is quantized; the head after it runs in numpy on the device and never sees int8.
NNCF calibrates on the job's training normals (never test images) with the family's recipe
(calibration/<family>.toml, ``[nncf]``: preset, subset size, parts that stay float; whether the result
is good enough is the int8 gate's to say, edgekit/export/int8_gate.py).
On the held-out normals and the same normals with defects painted on (``int8_gate.painted_set``)
the export records the *score agreement*, mean of ``max(0, 1 - |s_q - s_f| / s_f)`` where s is the
raw score of the bundle's own head on the int8 (q) and float (f) network outputs; ``--max-drop``
makes it the metric of NNCF's accuracy-controlled quantization, so a defect score int8 shrinks is a
drop NNCF sees and answers by returning the ops that cause it to float. Figures: README,
"Quantization"; docs/quantization.md.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from edgekit.errors import EdgekitError

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.export.job import ExportJob

#: recipe name of a part that stays float -> the op types that make it up, per format. Parts that
#: are not an op type of their own are found by node (``named_parts``): "depthwise" in ONNX (a Conv
#: with groups > 1) and "first_convolution" (the convolution that reads the image) in both.
FLOAT_PARTS: dict[str, dict[str, tuple[str, ...]]] = {
    "embedding_tail": {"openvino": ("AvgPool", "Interpolate", "Concat"), "onnx": ("AveragePool", "Resize", "Concat")},
    "depthwise": {"openvino": ("GroupConvolution",), "onnx": ()},
    "first_convolution": {"openvino": (), "onnx": ()},
    # autoencoders: the squared error (x - x̂)² in the graph. Ranges calibrated on normals clip
    # a defect's larger error (11-47 % low in int8), so it stays float.
    "error_map": {"openvino": ("Subtract", "Multiply"), "onnx": ("Sub", "Mul")},
    # FastFlow: the flows' coupling arithmetic and the likelihood map (z², mean, exp). int8 there
    # moved brick scores by 21 % median, 72 % max (x86; calibration/fastflow.toml).
    "flow_arithmetic": {
        "openvino": ("Multiply", "Add", "Subtract", "Exp", "Tanh", "Power", "ReduceMean", "Interpolate"),
        "onnx": ("Mul", "Add", "Sub", "Exp", "Tanh", "Pow", "ReduceMean", "Resize"),
    },
    # reverse_distillation: the per-level cosine distance of encoder and decoder features and the
    # resize of the deeper levels' distances (calibration/reverse_distillation.toml has the figures).
    "feature_distance": {
        "openvino": ("Multiply", "ReduceSum", "Sqrt", "Divide", "Interpolate"),
        "onnx": ("Mul", "ReduceSum", "Sqrt", "Div", "Resize"),
    },
    # EfficientAD: the squared differences, their channel means and the quantile normalisation of
    # the two maps. Kept float by analogy with error_map; int8 without it was not measured, and
    # with it defects are still clipped in the convolutions (calibration/efficient_ad.toml).
    "efficient_ad_map": {
        "openvino": ("Subtract", "Multiply", "Divide", "Power", "Add", "ReduceMean"),
        "onnx": ("Sub", "Mul", "Div", "Pow", "Add", "ReduceMean"),
    },
}
#: Op types whose int8 or float state the manifest reports (arithmetic ops NNCF can quantize).
_REPORTED_OPS = {
    "Convolution",
    "GroupConvolution",
    "MatMul",
    "AvgPool",
    "Interpolate",
    "Conv",
    "Conv (depthwise)",
    "Gemm",
    "AveragePool",
    "Resize",
}

Embed = Callable[[np.ndarray], np.ndarray]  # (N, C, H, W) prepared images -> (N, D, h, w) embeddings


@dataclass(frozen=True)
class QuantizationRecipe:
    """How a model family is quantized with NNCF, read from the ``[nncf]`` table of its recipe."""

    preset: str  # NNCF preset: "performance" (symmetric) or "mixed"
    subset_size: int  # calibration images NNCF collects statistics on, at most
    fast_bias_correction: bool
    stay_float: tuple[str, ...]  # parts of the network (FLOAT_PARTS) that stay float


def recipe_for(recipe: dict[str, Any]) -> QuantizationRecipe:
    """The NNCF part of a family recipe (calibration/<family>.toml), checked."""
    section = recipe.get("nncf", {})
    preset = str(section.get("preset", "performance"))
    if preset not in ("performance", "mixed"):
        raise EdgekitError(f"calibration recipe: nncf.preset must be 'performance' or 'mixed', not {preset!r}")
    stay_float = tuple(str(part) for part in section.get("stay_float", ()))
    unknown = [part for part in stay_float if part not in FLOAT_PARTS]
    if unknown:
        raise EdgekitError(
            f"calibration recipe: nncf.stay_float names unknown parts {unknown}; known: {', '.join(FLOAT_PARTS)}"
        )
    return QuantizationRecipe(
        preset=preset,
        subset_size=int(recipe.get("subset_size", 300)),
        fast_bias_correction=bool(section.get("fast_bias_correction", True)),
        stay_float=stay_float,
    )


def _nncf():
    try:
        import nncf
    except ImportError:
        raise EdgekitError("int8 export needs NNCF: pip install 'edgekit-anomaly[train]'") from None
    return nncf


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF logs INFO lines and draws progress bars on stdout; the export prints its own progress."""
    nncf = _nncf()
    from nncf.common.logging import nncf_logger

    level = nncf_logger.level
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield nncf
    finally:
        nncf.set_log_level(level)


# ---- the score agreement -----------------------------------------------------------------------------


def score_agreement(reference_scores: np.ndarray, candidate_scores: np.ndarray) -> tuple[float, list[float]]:
    """Mean and per-image ``max(0, 1 - |candidate - reference| / reference)``; 1.0 = identical scores."""
    reference_scores = np.asarray(reference_scores, dtype=np.float64)
    candidate_scores = np.asarray(candidate_scores, dtype=np.float64)
    if reference_scores.shape != candidate_scores.shape or reference_scores.size == 0:
        raise EdgekitError("score agreement needs the same, non-zero number of reference and candidate scores")
    scale = np.maximum(np.abs(reference_scores), 1e-12)
    per_image = np.clip(1.0 - np.abs(candidate_scores - reference_scores) / scale, 0.0, 1.0)
    return float(per_image.mean()), [float(v) for v in per_image]


class ScoreAgreementValidation:
    """NNCF ``validation_fn`` on validation images (held-out normals, plain and painted) given as
    ``(index, image batch)`` items.

    ``embed_with(model)`` turns what NNCF passes (an OpenVINO CompiledModel, an ONNX ModelProto)
    into an :data:`Embed`; the last one is kept, as NNCF validates one model item by item.
    ``score`` turns network outputs into image scores (the bundle's own head).
    """

    def __init__(
        self, score: Callable[[np.ndarray], np.ndarray], float_scores: np.ndarray, embed_with: Callable[[Any], Embed]
    ) -> None:
        self.score = score
        self.float_scores = np.asarray(float_scores, dtype=np.float64)
        self.embed_with = embed_with
        self._last: tuple[Any, Embed] | None = None

    def __call__(self, model: Any, items: Iterable[tuple[int, np.ndarray]]) -> tuple[float, list[float]]:
        if self._last is None or self._last[0] is not model:
            self._last = (model, self.embed_with(model))
        embed = self._last[1]
        indices, scores = [], []
        for index, batch in items:
            indices.append(int(index))
            scores.append(float(self.score(embed(batch))[0]))
        return score_agreement(self.float_scores[indices], np.asarray(scores))


def _embed_all(embed: Embed, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    return np.concatenate([embed(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


# ---- quantization, shared by the formats ---------------------------------------------------------------


def _quantize(
    model: Any,
    job: "ExportJob",
    *,
    format_name: str,
    named_parts: dict[str, list[str]],
    float_embed: Embed,
    embed_with: Callable[[Any], Embed],
    transform: Callable[[np.ndarray], Any],
) -> tuple[Any, dict]:
    """NNCF PTQ of ``model`` on the job's calibration images, or accuracy-controlled PTQ when
    ``job.options.max_drop`` is set; returns the quantized model and the manifest notes."""
    recipe = recipe_for(job.recipe)
    max_drop = job.options.max_drop
    if len(job.calibration) == 0:
        raise EdgekitError("int8 export needs calibration images (training normals); the run has none")
    if max_drop is not None and not 0 < max_drop < 1:
        raise EdgekitError(f"--max-drop must be between 0 and 1 (a drop of score agreement), not {max_drop}")
    if max_drop is not None and len(job.validation) < 2:
        raise EdgekitError("--max-drop needs at least 2 held-out normals and painted images to validate on")
    calibration_items = [job.calibration[i : i + 1] for i in range(len(job.calibration))]
    parts = recipe.stay_float
    float_types = sorted({op for part in parts for op in FLOAT_PARTS[part][format_name]})
    float_names = sorted({name for part in parts for name in named_parts.get(part, ())})
    notes: dict[str, Any] = {
        "tool": f"nncf {_nncf().__version__}",
        "preset": recipe.preset,
        "calibration_images": len(calibration_items),
        "calibration_source": "training normals (the images the model was built from), never test images",
        "stay_float": list(parts),
        "float_op_types": float_types,
        "float_nodes": len(float_names),
        "never_quantized": "the head after the network (numpy on the device)",
    }
    with _quiet_nncf() as nncf:
        scope = nncf.IgnoredScope(types=float_types, names=float_names, validate=False)
        common = dict(
            preset=getattr(nncf.QuantizationPreset, recipe.preset.upper()),
            subset_size=min(recipe.subset_size, len(calibration_items)),
            fast_bias_correction=recipe.fast_bias_correction,
            ignored_scope=scope,
        )
        calibration = nncf.Dataset(calibration_items, transform)
        validate, items = _score_agreement_on_held_out(job, float_embed, embed_with)
        try:
            if max_drop is None:
                quantized = nncf.quantize(model, calibration, **common)
                notes["method"] = "NNCF post-training quantization (min-max ranges, bias correction)"
            else:
                quantized = nncf.quantize_with_accuracy_control(
                    model,
                    calibration,
                    nncf.Dataset(items, lambda item: transform(item[1])),
                    validate,
                    max_drop=max_drop,
                    drop_type=nncf.DropType.ABSOLUTE,
                    **common,
                )
                notes["method"] = (
                    f"NNCF accuracy-controlled quantization: from the recipe, ops return to float "
                    f"until the score agreement on held-out normals and painted defects drops by at most {max_drop}"
                )
        except Exception as exc:  # NNCF raises many types; name the first line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EdgekitError(f"NNCF quantization failed: {first}") from None
    if items:
        notes["validation"] = {
            "metric": "score agreement: mean over held-out normals and the same normals with defects painted "
            "on of max(0, 1 - |s_q - s_f| / s_f), s = the raw image score of the bundle's own numpy head",
            "images": len(items),
            "agreement": round(validate(quantized, items)[0], 6),
            "max_drop": max_drop,
        }
    return quantized, notes


def _score_agreement_on_held_out(job: "ExportJob", float_embed: Embed, embed_with: Callable[[Any], Embed]):
    """The validation function and its ``(index, image)`` items (none without held-out images),
    scoring with the bundle's own numpy head."""
    if len(job.validation) == 0:
        return ScoreAgreementValidation(lambda outputs: outputs, np.zeros(0), embed_with), []
    float_scores = job.head_score(_embed_all(float_embed, job.validation))
    per_image = len(job.validation) // len(float_scores)  # a tiled input's tiles are one item
    items = [(i, job.validation[i * per_image : (i + 1) * per_image]) for i in range(len(float_scores))]
    return ScoreAgreementValidation(job.head_score, float_scores, embed_with), items


def _census(ops: Iterable[tuple[str, bool]]) -> dict[str, dict[str, int]]:
    """Per reported op type: how many run with int8 inputs and how many stayed float."""
    int8: Counter = Counter()
    floating: Counter = Counter()
    for op_type, quantized in ops:
        if op_type in _REPORTED_OPS:
            (int8 if quantized else floating)[op_type] += 1
    return {"int8": dict(sorted(int8.items())), "float": dict(sorted(floating.items()))}


# ---- OpenVINO --------------------------------------------------------------------------------------------


def _openvino_embed(model: Any) -> Embed:
    """A CPU f32 embedding function for an ``ov.Model`` or an already compiled model."""
    import openvino as ov

    compiled = (
        model
        if isinstance(model, ov.CompiledModel)
        else ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    )
    return lambda batch: np.asarray(compiled(batch)[0])


def quantize_openvino(model: Any, job: "ExportJob") -> tuple[Any, dict]:
    """int8 ``ov.Model`` (FakeQuantize) from a float ``ov.Model``, and notes saying what was done."""
    first = next(
        (
            op.get_friendly_name()
            for op in model.get_ordered_ops()
            if op.get_type_name() in ("Convolution", "GroupConvolution")
        ),
        None,
    )
    quantized, notes = _quantize(
        model,
        job,
        format_name="openvino",
        named_parts={"first_convolution": [first] if first else []},
        float_embed=_openvino_embed(model),
        embed_with=_openvino_embed,
        transform=lambda batch: batch,
    )
    notes["ops"] = _census(
        (op.get_type_name(), any(_from_fake_quantize(i.get_source_output().get_node()) for i in op.inputs()))
        for op in quantized.get_ordered_ops()
    )
    return quantized, notes


def _from_fake_quantize(node: Any) -> bool:
    """Whether ``node`` is a FakeQuantize, looking through Pad (NNCF quantizes before a Pad)."""
    while node.get_type_name() == "Pad":
        node = node.input(0).get_source_output().get_node()
    return node.get_type_name() == "FakeQuantize"


# ---- ONNX ------------------------------------------------------------------------------------------------


def _onnx_embed(model: Any, input_name: str) -> Embed:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda batch: np.asarray(session.run(None, {input_name: batch})[0])


def _onnx_op_type(node: Any) -> str:
    if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute):
        return "Conv (depthwise)"
    return node.op_type


def quantize_onnx(model: Any, job: "ExportJob") -> tuple[Any, dict]:
    """int8 (QDQ) ``onnx.ModelProto`` from a float one, and notes saying what was done."""
    try:
        import onnxruntime  # noqa: F401  (NNCF's ONNX backend and the validation run on it)
    except ImportError:
        raise EdgekitError("int8 ONNX export needs onnxruntime: pip install 'edgekit-anomaly[onnx]'") from None
    name = job.input_name
    convolutions = [node for node in model.graph.node if node.op_type == "Conv"]
    named_parts = {
        "depthwise": [n.name for n in convolutions if _onnx_op_type(n) == "Conv (depthwise)"],
        "first_convolution": [n.name for n in convolutions[:1]],
    }  # graph nodes are in topological order
    quantized, notes = _quantize(
        model,
        job,
        format_name="onnx",
        named_parts=named_parts,
        float_embed=_onnx_embed(model, name),
        embed_with=lambda m: _onnx_embed(m, name),
        transform=lambda batch: {name: batch},
    )
    producers = {out: node.op_type for node in quantized.graph.node for out in node.output}
    notes["ops"] = _census(
        (_onnx_op_type(node), any(producers.get(i) == "DequantizeLinear" for i in node.input))
        for node in quantized.graph.node
    )
    return quantized, notes
