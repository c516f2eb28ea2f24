"""int8/fp16 export with NNCF for OpenVINO and ONNX, the igpu target, and the issue-3 accuracy gate.

Three layers: the score-agreement metric and the recipe (pure numpy); the converters on a tiny
conv network (seconds); and one real x86 int8 and one igpu fp16 export of the session's PatchCore
run, shared by the module.
"""

from __future__ import annotations

import dataclasses
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.bundle import load_bundle, save_bundle
from edgekit.check import check_bundles
from edgekit.cli import cli
from edgekit.errors import EdgekitError
from edgekit.export import onnx as onnx_format
from edgekit.export import openvino as openvino_format
from edgekit.export.job import ExportJob, ExportOptions
from edgekit.export.quantize import ScoreAgreementValidation, recipe_for, score_agreement
from edgekit.resources import read_toml
from edgekit.runtime.decision import prediction_bound_factor
from edgekit.targets import FormatSpec, get_target

# ---- the score agreement and the recipe ---------------------------------------------------------------


def test_score_agreement_is_one_minus_the_relative_score_error_clipped_at_zero():
    mean, per_image = score_agreement(np.array([10.0, 20.0, 4.0]), np.array([10.0, 18.0, 12.0]))
    assert per_image == pytest.approx([1.0, 0.9, 0.0])  # exact; 10 % off; 200 % off clips at 0
    assert mean == pytest.approx(1.9 / 3)
    with pytest.raises(EdgekitError, match="same, non-zero number"):
        score_agreement(np.ones(3), np.ones(2))


def test_validation_function_scores_the_float_network_1_and_a_shifted_one_lower():
    images = np.random.default_rng(1).uniform(1, 2, (3, 4, 2, 2)).astype(np.float32)
    float_scores = _largest_output(images)
    validate = ScoreAgreementValidation(
        _largest_output, float_scores, embed_with=lambda scale: lambda batch: batch * scale
    )
    items = [(i, images[i : i + 1]) for i in range(3)]
    assert validate(1.0, items) == (1.0, [1.0, 1.0, 1.0])
    shifted, per_image = validate(np.float32(50.0), items[1:])  # 50x: every score is off by >100 %
    assert shifted == 0.0 and per_image == [0.0, 0.0]


def test_the_shipped_recipe_keeps_the_embedding_tail_depthwise_and_stem_float():
    recipe = recipe_for(read_toml("calibration", "patchcore"))
    assert recipe.stay_float == ("embedding_tail", "depthwise", "first_convolution")
    assert recipe.preset == "performance" and recipe.subset_size == 300


@pytest.mark.parametrize(
    "section, message",
    [
        ({"preset": "fast"}, "nncf.preset must be 'performance' or 'mixed'"),
        ({"stay_float": ["head"]}, "unknown parts ['head']"),
    ],
)
def test_a_bad_recipe_is_one_clear_error(section, message):
    with pytest.raises(EdgekitError, match=message.replace("[", r"\[").replace("]", r"\]")):
        recipe_for({"nncf": section})


# ---- the converters on a tiny network ------------------------------------------------------------------


def _largest_output(outputs: np.ndarray) -> np.ndarray:
    """The tiny network's "head": each image's largest output value."""
    return outputs.reshape(len(outputs), -1).max(axis=1)


def _tiny_network():
    import torch
    from torch import nn

    class Tiny(nn.Module):
        """Conv → depthwise conv → two levels, each 3×3-averaged, resized and concatenated."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6())
            self.depthwise = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6())
            self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU6())

        def forward(self, image):
            fine = self.depthwise(self.stem(image))
            coarse = self.down(fine)
            levels = [torch.nn.functional.avg_pool2d(x, 3, 1, 1) for x in (fine, coarse)]
            resized = torch.nn.functional.interpolate(levels[1], size=levels[0].shape[-2:], mode="bilinear")
            return torch.cat([levels[0], resized], dim=1)

    torch.manual_seed(0)
    return Tiny().eval()


def _smooth_images(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (count, 3, 4, 4)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)  # (count, 3, 32, 32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A float ONNX of the tiny network and a job factory for it."""
    import torch

    from edgekit.export.onnx import torch_to_onnx

    folder = tmp_path_factory.mktemp("tiny")
    network = _tiny_network()
    example = torch.zeros(1, 3, 32, 32)
    onnx_path = torch_to_onnx(network, example, folder / "float.onnx", input_name="image", output_names=("embedding",))
    calibration, validation = _smooth_images(16, 0), _smooth_images(6, 1)
    float_out = network(torch.from_numpy(validation)).detach().numpy()
    x86, rpi4 = get_target("x86"), get_target("rpi4")
    onnx_spec = FormatSpec(name="onnx", runtime="onnxruntime", precisions=("fp32", "int8"), default_precision="fp32")

    def job(precision: str, *, fmt: str = "openvino", max_drop=None) -> ExportJob:
        out_dir = Path(tempfile.mkdtemp(prefix=f"{fmt}-{precision}-", dir=folder))
        return ExportJob(
            target=rpi4 if fmt == "tflite" else x86,
            format={"openvino": x86.format_spec(), "onnx": onnx_spec, "tflite": rpi4.format_spec("tflite")}[fmt],
            precision=precision,
            network=network,
            example=example,
            onnx_path=onnx_path,
            input_name="image",
            output_names=("embedding",),
            calibration=calibration,
            validation=validation,
            recipe=read_toml("calibration", "patchcore"),
            options=ExportOptions(precision=precision, max_drop=max_drop),
            out_dir=out_dir,
            head_score=_largest_output,
        )

    return {"job": job, "validation": validation, "float": float_out}


def _run_ir(xml: Path, batch: np.ndarray) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(batch)[0])


def _relative_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(candidate - reference) / np.linalg.norm(reference))


def test_openvino_int8_quantizes_convolutions_and_keeps_the_recipes_parts_float(tiny):
    converted = openvino_format.convert(tiny["job"]("int8"))
    xml = converted.files[0]
    ops = [layer.get("type") for layer in ET.parse(xml).getroot().iter("layer")]
    assert ops.count("FakeQuantize") >= 1
    notes = converted.notes["quantization"]
    assert notes["ops"]["int8"] == {"Convolution": 1}  # the stride-2 conv; the stem reads the image
    assert notes["ops"]["float"] == {"AvgPool": 2, "Convolution": 1, "GroupConvolution": 1, "Interpolate": 1}
    assert notes["calibration_images"] == 16
    assert notes["stay_float"] == ["embedding_tail", "depthwise", "first_convolution"]
    assert "head after the network" in notes["never_quantized"]
    assert notes["validation"]["images"] == 6 and 0.9 < notes["validation"]["agreement"] <= 1.0
    assert "int8" in converted.notes["compute_precision"]
    assert _relative_error(_run_ir(xml, tiny["validation"]), tiny["float"]) < 0.05


def test_openvino_fp16_halves_the_weights_and_computes_in_f32(tiny):
    fp32 = openvino_format.convert(tiny["job"]("fp32"))
    fp16 = openvino_format.convert(tiny["job"]("fp16"))
    ratio = fp16.files[1].stat().st_size / fp32.files[1].stat().st_size
    assert 0.45 < ratio < 0.6
    assert "computes with the f32 hint" in fp16.notes["compute_precision"]
    assert _relative_error(_run_ir(fp16.files[0], tiny["validation"]), tiny["float"]) < 2e-3


def test_onnx_int8_is_qdq_with_depthwise_float_and_runs_in_onnxruntime(tiny):
    import onnx
    import onnxruntime as ort

    converted = onnx_format.convert(tiny["job"]("int8", fmt="onnx"))
    model = onnx.load(str(converted.files[0]))
    kinds = [node.op_type for node in model.graph.node]
    assert kinds.count("QuantizeLinear") >= 1 and kinds.count("DequantizeLinear") >= 2
    assert converted.notes["quantization"]["ops"]["float"] == {
        "AveragePool": 2,
        "Conv": 1,
        "Conv (depthwise)": 1,
        "Resize": 1,
    }
    assert converted.notes["quantization"]["ops"]["int8"] == {"Conv": 1}
    session = ort.InferenceSession(str(converted.files[0]), providers=["CPUExecutionProvider"])
    output = session.run(None, {"image": tiny["validation"]})[0]
    assert _relative_error(output, tiny["float"]) < 0.05


def test_max_drop_runs_accuracy_control_and_records_the_agreement_reached(tiny):
    converted = openvino_format.convert(tiny["job"]("int8", max_drop=0.005))
    notes = converted.notes["quantization"]
    assert notes["method"].startswith("NNCF accuracy-controlled quantization: from the recipe")
    validation = notes["validation"]
    assert validation["images"] == 6 and validation["max_drop"] == 0.005
    assert validation["agreement"] >= 1 - 0.005


def test_tflite_max_drop_returns_op_types_to_float_until_the_agreement_holds(tiny):
    """ai-edge-quantizer has no accuracy control: the export returns op types to float, the one
    restoring the most score agreement first, and records each round."""
    from edgekit.export import tflite as tflite_format
    from edgekit.export.quantize import score_agreement
    from edgekit.runtime.backends import BackendOptions
    from edgekit.runtime.backends.litert import load

    def agreement(converted) -> float:
        backend = load(converted.files[0], BackendOptions(output_names=("embedding",)))
        images = tiny["validation"].transpose(0, 2, 3, 1)
        scores = _largest_output(backend.infer({"image": images})["embedding"])
        return score_agreement(_largest_output(tiny["float"]), scores)[0]

    plain = tflite_format.convert(tiny["job"]("int8", fmt="tflite"))
    assert "accuracy_control" not in plain.notes["quantization"]
    start = agreement(plain)
    goal = 1 - (1 - start) / 2  # half of plain int8's disagreement
    controlled = tflite_format.convert(tiny["job"]("int8", fmt="tflite", max_drop=1 - goal))
    control = controlled.notes["quantization"]["accuracy_control"]
    rounds = control["rounds"]
    assert rounds[0]["float_ops"] == ["DEPTHWISE_CONV_2D"] and rounds[0]["agreement"] == pytest.approx(start, abs=1e-6)
    assert len(rounds) >= 2 and control["float_ops"] == ["DEPTHWISE_CONV_2D", *[r["float"] for r in rounds[1:]]]
    for round_ in rounds[1:]:  # each round kept the op type whose return to float agreed best
        assert round_["agreement"] == max(round_["tried"].values()) and round_["float"] in round_["tried"]
    assert control["agreement"] >= goal - 1e-6 and agreement(controlled) == pytest.approx(
        control["agreement"], abs=1e-6
    )

    def compute_ops(converted) -> dict:  # the graph's ops but the (de)quantize bookkeeping
        ops = converted.notes["quantization"]["ops"]
        return {op: count for op, count in ops.items() if op not in ("QUANTIZE", "DEQUANTIZE")}

    assert compute_ops(controlled) == compute_ops(plain)  # the same graph; only its precisions changed
    loose = tflite_format.convert(tiny["job"]("int8", fmt="tflite", max_drop=0.99))
    assert len(loose.notes["quantization"]["accuracy_control"]["rounds"]) == 1


@pytest.mark.parametrize("max_drop", [0.0, 1.5])
def test_max_drop_outside_0_1_is_refused(tiny, max_drop):
    with pytest.raises(EdgekitError, match="--max-drop must be between 0 and 1"):
        openvino_format.convert(tiny["job"]("int8", max_drop=max_drop))


def test_the_threshold_fit_stand_in_is_the_cpu_only_when_the_device_is_absent():
    assert openvino_format.threshold_fit_stand_in("CPU") is None
    stand_in = openvino_format.threshold_fit_stand_in("NPU")  # no NPU on a CI runner
    assert stand_in["device"] == "CPU" and stand_in["instead_of"] == "NPU" and "no OpenVINO NPU" in stand_in["why"]


# ---- the real PatchCore bundles (issue 3's numbers) ------------------------------------------------------


@pytest.fixture(scope="module")
def x86_int8(exported) -> Path:
    return exported("x86", "openvino", "int8")


@pytest.fixture(scope="module")
def igpu_fp16(patchcore_run, tmp_path_factory) -> Path:
    from edgekit.export.pipeline import export_run

    out = tmp_path_factory.mktemp("igpu") / "igpu-fp16"
    export_run(patchcore_run.path, out, target="igpu")
    return out


@pytest.fixture(scope="module")
def int8_vs_fp32(x86_bundle, x86_int8, brick):
    return check_bundles(x86_bundle, x86_int8, brick)


@pytest.mark.e2e
def test_x86_int8_loses_at_most_001_image_auroc_and_is_smaller(int8_vs_fp32, x86_bundle, x86_int8):
    result = int8_vs_fp32
    assert result.images == 60
    assert result.reference.precision == "fp32" and result.candidate.precision == "int8"
    assert result.auroc_drop <= 0.01
    assert load_bundle(x86_int8).size_bytes() < 0.6 * load_bundle(x86_bundle).size_bytes()


#: int8 may flip only images this close (relative) to the fp32 threshold, and moves no score further.
#: The int8 kernels differ by CPU: on an AMD EPYC VM flips stayed within 0.5 %; on an Intel Xeon VM a
#: normal 0.88 % under the threshold flipped (int8 moved it +0.75 % and its own threshold −0.51 %),
#: and the largest move of any score was 1.6 %.
KNIFE_EDGE = 0.02


@pytest.mark.e2e
def test_x86_int8_changes_decisions_only_where_fp32_sits_on_its_threshold(int8_vs_fp32, x86_bundle):
    result = int8_vs_fp32
    threshold = load_bundle(x86_bundle).manifest.decision.image_threshold
    margins = np.abs(result.reference.raw_scores - threshold) / threshold
    flipped = result.reference.decisions != result.candidate.decisions
    assert np.all(margins[flipped] < KNIFE_EDGE)
    relative_change = np.abs(result.candidate.raw_scores - result.reference.raw_scores) / result.reference.raw_scores
    assert relative_change.mean() < 0.01 and relative_change.max() < KNIFE_EDGE


@pytest.mark.e2e
def test_x86_int8_decisions_agree_on_98_percent_of_test_images(int8_vs_fp32):
    assert int8_vs_fp32.agreement >= 0.98


@pytest.mark.e2e
def test_int8_thresholds_are_refitted_on_its_own_held_out_scores(x86_bundle, x86_int8, patchcore_run):
    import edgekit

    holdout = [Path(p) for p in patchcore_run.config["holdout_images"]]
    int8 = edgekit.load(x86_int8)
    scores, _ = int8.raw(holdout)
    decision = int8.manifest.decision
    assert decision.fitted_on == len(holdout)
    k = prediction_bound_factor(len(holdout))
    assert decision.image_threshold == pytest.approx(scores.mean() + k * scores.std(ddof=1), rel=1e-6)
    fp32_threshold = load_bundle(x86_bundle).manifest.decision.image_threshold
    assert abs(decision.image_threshold - fp32_threshold) > 1e-4 * fp32_threshold


@pytest.mark.e2e
def test_int8_manifest_says_what_was_quantized_on_which_images(x86_int8, patchcore_run):
    manifest = load_bundle(x86_int8).manifest
    notes = manifest.export["quantization"]
    assert manifest.precision == "int8" and manifest.export["precision"] == "int8"
    bank_images = len(patchcore_run.config["bank_images"])  # 48, and the recipe's quarter painted 4 ways
    assert manifest.export["painted_calibration"] == {"share": 0.25, "images": 4 * round(0.25 * bank_images)}
    assert notes["calibration_images"] == bank_images + manifest.export["painted_calibration"]["images"]
    assert notes["calibration_source"].startswith("training normals")
    assert notes["ops"]["int8"]["Convolution"] >= 20
    assert notes["ops"]["float"]["GroupConvolution"] >= 1 and notes["ops"]["float"]["AvgPool"] >= 1


def _damaged_copy(bundle: Path, out: Path, keep_every: int = 4) -> Path:
    """The bundle with only every ``keep_every``-th bank row (a botched re-selection), thresholds kept."""
    from edgekit.runtime.bank import decode_bank, encode_bank

    source = load_bundle(bundle)
    manifest = source.manifest
    params = manifest.head.params
    dtype = params.get("bank", {}).get("dtype", "float32")
    bank = decode_bank({name: source.array(name) for name in manifest.head.arrays}, dtype)[::keep_every]
    head = dataclasses.replace(manifest.head, params={**params, "bank": {**params.get("bank", {}), "rows": len(bank)}})
    return save_bundle(
        out,
        dataclasses.replace(manifest, head=head),
        files={name: source.path(name) for name in manifest.network.files},
        arrays={manifest.head.arrays[name]: array for name, array in encode_bank(bank, dtype).items()},
    )


@pytest.mark.e2e
def test_check_passes_int8_and_fails_a_damaged_bundle(x86_bundle, x86_int8, brick, tmp_path):
    runner = CliRunner()
    passed = runner.invoke(
        cli,
        [
            "check",
            "--reference",
            str(x86_bundle),
            "--candidate",
            str(x86_int8),
            "--data",
            str(brick),
            "--junit",
            str(tmp_path / "int8.xml"),
        ],
    )
    assert passed.exit_code == 0, passed.output
    assert "x86 / int8" in passed.output and "result: PASS" in passed.output
    damaged = _damaged_copy(x86_int8, tmp_path / "damaged")
    failed = runner.invoke(
        cli,
        [
            "check",
            "--reference",
            str(x86_bundle),
            "--candidate",
            str(damaged),
            "--data",
            str(brick),
            "--junit",
            str(tmp_path / "damaged.xml"),
        ],
    )
    assert failed.exit_code == 1, failed.output
    assert "result: FAIL - decisions agree on" in failed.output
    assert ET.parse(tmp_path / "damaged.xml").getroot().get("failures") != "0"


@pytest.mark.e2e
def test_igpu_bundle_exports_here_records_its_cpu_fit_and_refuses_to_load_without_a_gpu(igpu_fp16, x86_bundle, brick):
    import edgekit

    manifest = load_bundle(igpu_fp16).manifest
    assert (manifest.target, manifest.device, manifest.precision) == ("igpu", "GPU", "fp16")
    assert (
        manifest.export["threshold_fit"]["device"] == "CPU" and manifest.export["threshold_fit"]["instead_of"] == "GPU"
    )
    image = str(next((brick / "test" / "good").glob("*.png")))
    result = CliRunner().invoke(cli, ["predict", str(igpu_fp16), image])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'GPU'" in lines[0]
    # on the CPU it runs, and its fp16 weights score like the fp32 bundle's
    on_cpu, _ = edgekit.load(igpu_fp16, device="CPU").raw([image])
    reference, _ = edgekit.load(x86_bundle).raw([image])
    np.testing.assert_allclose(on_cpu, reference, rtol=5e-3)


def test_igpu_offers_fp16_and_int8_not_fp32(patchcore_run, tmp_path):
    from edgekit.export.pipeline import export_run

    target = get_target("igpu")
    assert (target.device, target.default_precision, target.precisions) == ("GPU", "fp16", ("fp16", "int8"))
    with pytest.raises(EdgekitError, match="offers precisions fp16, int8, not 'fp32'"):
        export_run(patchcore_run.path, tmp_path / "b", target="igpu", options=ExportOptions(precision="fp32"))
    assert not (tmp_path / "b").exists()
