"""``edgekit export``: a training run → a bundle for one target.

1. the model family says what is network and what is head data (edgekit/families/registry.py);
2. the network goes torch → ONNX → the target's format at the chosen precision (FORMATS), with
   calibration data drawn from training normals only;
3. a provisional bundle is loaded with the device runtime itself and run on the held-out normal
   images, and the thresholds and normalisation are fitted on those raw scores;
4. the final bundle is written atomically.

The manifest holds no wall-clock values but its ``created`` time, which honours
``SOURCE_DATE_EPOCH`` (:mod:`edgekit.clock`), so exporting one run twice with the same versions
gives byte-identical bundles wherever the converters themselves are deterministic.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from edgekit import __version__
from edgekit.bundle import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Bundle,
    Decision,
    Manifest,
    NetworkSpec,
    load_bundle,
    save_bundle,
)
from edgekit.clock import created_time
from edgekit.errors import EdgekitError, UnsupportedOp
from edgekit.export import int8_gate
from edgekit.export import onnx as onnx_format
from edgekit.export import openvino as openvino_format
from edgekit.export import tflite as tflite_format
from edgekit.export.job import Converted, ExportJob, ExportOptions, FamilyParts, count_flops
from edgekit.families.registry import FAMILIES, export_parts, recipe_name, takes_bank_options
from edgekit.preprocess import InputSpec, prepare, stitch
from edgekit.progress import ProgressFn, noop
from edgekit.resources import read_toml
from edgekit.runtime.decision import ThresholdRule, fit_decision
from edgekit.staging import make_staging, refuse_unowned
from edgekit.targets import FormatSpec, Target, get_target
from edgekit.train.run import Run, open_run

#: format name -> converter (one module per format).
FORMATS: dict[str, Callable[[ExportJob], Converted]] = {
    "openvino": openvino_format.convert,
    "onnx": onnx_format.convert,
    "tflite": tflite_format.convert,
}
#: formats whose converter reads the float ONNX file (TFLite converts from torch directly, so an op
#: only the ONNX exporter lacks does not stop a TFLite export).
READS_ONNX = frozenset({"openvino", "onnx"})


def family_parts(run: Run, options: ExportOptions) -> FamilyParts:
    """What the run's family puts into the network and into the head (of the kind it registered)."""
    parts = export_parts(run.model)(run, options)
    declared = FAMILIES[run.model].head
    if parts.head.kind != declared:
        raise EdgekitError(f"model {run.model!r} registers a {declared!r} head but its export made {parts.head.kind!r}")
    return parts


INPUT_NAME = "image"
_PLACEHOLDER = Decision(
    image_threshold=0.0,
    pixel_threshold=0.0,
    image_center=0.0,
    pixel_center=0.0,
    method="provisional, replaced before the bundle is written",
    fitted_on=0,
)


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    target: str = "x86",
    options: ExportOptions = ExportOptions(),
    overwrite: bool = False,
    progress: ProgressFn = noop,
) -> Bundle:
    """Export a training run for ``target``; returns the verified, loaded bundle."""
    run = open_run(run_dir)
    spec = get_target(target)
    fmt = spec.format_spec(options.format)
    precision = options.precision or fmt.default_precision
    if precision not in fmt.precisions:
        raise EdgekitError(
            f"target {spec.name} ({fmt.name}) offers precisions {', '.join(fmt.precisions)}, not {precision!r}"
        )
    if fmt.name not in FORMATS:
        raise EdgekitError(f"target {spec.name}: format {fmt.name!r} cannot be exported by this edgekit")
    try:
        export_parts(run.model)  # a model that is not exported (or unknown) is refused before any work
    except EdgekitError as error:
        raise EdgekitError(f"run {run.path}: {error}") from None
    if not takes_bank_options(run.model) and (options.bank_dims, options.bank_dtype, options.bank_size) != (None,) * 3:
        banked = ", ".join(name for name in FAMILIES if takes_bank_options(name))
        raise EdgekitError(f"--bank-* options apply to models with a memory bank ({banked}), not {run.model}")
    if options.max_drop is not None and precision != "int8":
        raise EdgekitError(f"--max-drop steers int8 quantization, not {precision}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise EdgekitError(f"{out} already exists; choose another --out or pass --overwrite")
    # said before the export's minutes of work; save_bundle checks the same again when it writes
    refuse_unowned(out, owned=_looks_like_bundle, what="bundle", protect=[run.path])
    holdout = _existing(run.record.held_out_images, run, "thresholds are fitted on them")
    rule = ThresholdRule.parse(options.threshold_rule)
    rule.check(len(holdout), anomalies=0)  # before the minutes of work: export has normals only
    created = created_time()  # a bad SOURCE_DATE_EPOCH is refused before the minutes of work
    staging = make_staging(".edgekit-export-")
    try:
        manifest, files, arrays, gate = _build(run, spec, fmt, precision, options, staging, progress, created=created)
        provisional = save_bundle(staging / "provisional", manifest, files=files, arrays=arrays)
        # a converter whose device is absent here names a stand-in (recorded in the manifest)
        fit_device = manifest.export.get("threshold_fit", {}).get("device")
        from edgekit.runtime.detector import load

        exported = load(provisional, device=fit_device)  # one load for the gate and the thresholds
        if gate is not None:
            check = _int8_gate(exported, gate, manifest, options, progress)
            manifest = replace(manifest, export={**manifest.export, "int8_check": check})
        decision = _fit_on_exported(exported, holdout, progress, rule=rule)
        manifest = replace(manifest, decision=decision)
        save_bundle(out, manifest, files=files, arrays=arrays, overwrite=overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_bundle(out)


def _looks_like_bundle(path: Path) -> bool:
    """A bundle folder (with its manifest) or a zip archive: what ``overwrite`` may replace."""
    import zipfile

    if path.is_dir() and not path.is_symlink():
        return (path / MANIFEST_NAME).is_file()
    return path.is_file() and zipfile.is_zipfile(path)


def _existing(paths: Sequence[Path], run: Run, why: str) -> list[Path]:
    paths = list(paths)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise EdgekitError(f"image {missing[0]} of run {run.path} is gone ({why}); restore the dataset or re-train")
    return paths


def _input_spec(run: Run, fmt: FormatSpec, options: ExportOptions) -> InputSpec:
    """The run's pre-processing in the format's layout; ``--fit``/``--roi`` replace its geometry."""
    spec = replace(run.record.input, layout=fmt.layout, name=INPUT_NAME)
    if options.fit is not None:
        spec = replace(spec, fit=options.fit)
    if options.roi is not None:
        spec = replace(spec, roi=tuple(options.roi))
    return spec


def _build(
    run: Run,
    spec: Target,
    fmt: FormatSpec,
    precision: str,
    options: ExportOptions,
    staging: Path,
    progress: ProgressFn,
    *,
    created: str,
):
    import torch

    from edgekit.export.onnx import OPSET, torch_to_onnx

    progress("export network", 0, 2)
    recipe = read_toml("calibration", recipe_name(run.model))
    parts = family_parts(run, replace(options, precision=precision))  # the families see the resolved precision
    input_spec = _input_spec(run, fmt, options)
    example = torch.zeros(1, input_spec.channels, input_spec.height, input_spec.width)
    outputs = (parts.output_name,)
    onnx_path = None
    if fmt.name in READS_ONNX:
        with _naming_the_target(spec, fmt, run):
            onnx_path = torch_to_onnx(
                parts.network, example, staging / "network.onnx", input_name=INPUT_NAME, output_names=outputs
            )
    network_flops, output_shape = count_flops(parts.network, example)
    progress("export network", 1, 2)
    format_dir = staging / "format"
    format_dir.mkdir()
    float_spec = replace(input_spec, layout="NCHW")  # the torch/ONNX graph is NCHW
    calibration = validation = np.zeros((0,), np.float32)
    painted_calibration: dict[str, Any] = {}
    if precision != "fp32":  # only quantizers need data; never test images
        wanted = options.calibration_images or int(recipe.get("subset_size", 300))
        trained = _existing(run.record.trained_images, run, "calibration uses them")[:wanted]
        calibration = prepare(trained, float_spec)
        share = int8_gate.painted_share(recipe, options.painted_calibration)
        if share > 0:  # defect activations in the ranges: painted onto training normals, not the gate's
            images, kinds = int8_gate.painted_set(trained[: max(1, round(share * len(trained)))], input_spec, 0)
            painted = [image for image, kind in zip(images, kinds) if kind != "normal"]
            calibration = np.concatenate([calibration, prepare(painted, int8_gate.at_network_size(float_spec))])
            painted_calibration = {"painted_calibration": {"share": share, "images": len(painted)}}
        # --max-drop's validation: the held-out normals and, painted with other defects than the
        # gate's (another seed), the same normals; what a defect does inside the network counts
        held = _existing(run.record.held_out_images, run, "validation uses them")
        images, _ = int8_gate.painted_set(held, input_spec, seed=run.record.seed + 1)
        validation = prepare(images, int8_gate.at_network_size(float_spec))
    job = ExportJob(
        target=spec,
        format=fmt,
        precision=precision,
        network=parts.network,
        example=example,
        onnx_path=onnx_path,
        input_name=INPUT_NAME,
        output_names=outputs,
        calibration=calibration,
        validation=validation,
        recipe=recipe,
        options=options,
        out_dir=format_dir,
        input_spec=input_spec,
        head_score=_head_score(parts, input_spec),
    )
    with _naming_the_target(spec, fmt, run):
        converted = FORMATS[fmt.name](job)
    progress("export network", 2, 2)
    files = {p.name: p for p in converted.files}
    record = run.record
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        edgekit_version=__version__,
        model=run.model,
        backbone=record.backbone,
        target=spec.name,
        runtime=fmt.runtime,
        device=spec.device,
        precision=precision,
        input=input_spec,
        network=NetworkSpec(
            format=fmt.name, files=tuple(p.name for p in converted.files), input_name=INPUT_NAME, output_names=outputs
        ),
        head=parts.head,
        decision=_PLACEHOLDER,
        source={
            "run": str(run.path.resolve()),
            "run_fingerprint": run.fingerprint(),
            "dataset": dict(record.dataset),
            "layers": list(record.layers),
        },
        export={
            "precision": precision,
            "recipe": f"calibration/{recipe_name(run.model)}.toml",
            "recipe_values": recipe,
            **({"onnx_opset": OPSET} if onnx_path is not None else {}),
            "threads": spec.threads,
            "mode": spec.mode,
            "calibration_images": int(len(calibration)),
            **painted_calibration,
            "network_flops": network_flops,
            "output_shape": output_shape,
            "network_flops_method": "torch FlopCounterMode on the float network, batch 1, 2 FLOPs per "
            "multiply-add of convolutions and matrix products",
            **parts.notes,
            **converted.notes,
            "created": created,
        },
    )
    gate = None
    if precision == "int8":  # the float side of the int8 gate, while the float network is at hand
        progress("int8 gate", 0, 2)
        held = _existing(run.record.held_out_images, run, "the int8 gate paints defects on them")
        images, kinds = int8_gate.painted_set(held, input_spec, seed=record.seed)
        gate = (images, kinds, int8_gate.float_scores(parts.network, job.head_score, images, input_spec))
    return manifest, files, parts.arrays, gate


def _int8_gate(exported, gate: tuple, manifest: Manifest, options: ExportOptions, progress: ProgressFn) -> dict:
    """The int8 network against the float one on painted held-out normals; refuses below the limits."""
    images, kinds, fp32 = gate
    int8 = int8_gate.bundle_scores(exported, images)
    progress("int8 gate", 2, 2)
    limits = int8_gate.limits_for(manifest.export.get("recipe_values", {}))
    check = int8_gate.judge(fp32, int8, kinds, rule=options.threshold_rule, limits=limits)
    if not check["passed"]:
        raise int8_gate.Int8Refused(
            int8_gate.refusal(
                manifest.model,
                manifest.target,
                manifest.network.format,
                check,
                painted=manifest.export.get("painted_calibration", {}).get("share", 0.0),
            ),
            check,
        )
    return check


def _head_score(parts: FamilyParts, spec: InputSpec) -> Callable[[np.ndarray], np.ndarray]:
    """The head the bundle will hold, as network outputs -> raw image scores."""
    from edgekit.runtime.heads import build_head

    arrays = {name: parts.arrays[path] for name, path in parts.head.arrays.items()}
    head = build_head(parts.head.kind, parts.head.params, arrays, output_height=spec.height, output_width=spec.width)
    return lambda outputs: stitch(*head(outputs), spec)[0]


@contextlib.contextmanager
def _naming_the_target(spec: Target, fmt: FormatSpec, run: Run) -> Iterator[None]:
    """An op a converter cannot express becomes one line naming the op, the target and the way out."""
    try:
        yield
    except UnsupportedOp as exc:
        others = [name for name in spec.formats if name != fmt.name]
        way_out = f"; try --format {' or '.join(others)}" if others else ""
        raise EdgekitError(f"cannot export {run.model} for target {spec.name} ({fmt.name}): {exc}{way_out}") from None


def _fit_on_exported(detector, holdout: list[Path], progress: ProgressFn, *, rule: ThresholdRule) -> Decision:
    """Thresholds fitted on the held-out normals through the exported model itself."""
    progress("fit thresholds", 0, len(holdout))
    scores, maps = [], []
    for start in range(0, len(holdout), 8):
        batch_scores, batch_maps = detector.raw(holdout[start : start + 8])
        scores.append(batch_scores)
        maps.append(batch_maps)
        progress("fit thresholds", min(start + 8, len(holdout)), len(holdout))
    return fit_decision(np.concatenate(scores), np.concatenate(maps), rule=rule, fitted_with=detector.runtime_identity)
