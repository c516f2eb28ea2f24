"""The int8 gate: its judgement on scores (what passes, what is refused, what is only recorded), its
painted validation set (held-out normals only, never a test image), and what a bundle records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from edgekit.export.int8_gate import DEFAULT_LIMITS, judge, limits_for, painted_share, refusal

KINDS = ["normal"] * 12 + ["scratch", "stain", "missing", "discolor"] * 12


def _scores(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(10, 1, 12), rng.normal(20, 2, 48)])


def test_an_int8_network_that_keeps_the_scores_passes():
    fp32 = _scores()
    check = judge(fp32, fp32 * 1.001, KINDS, rule="bound", limits=DEFAULT_LIMITS)
    assert check["passed"] and check["judged"] and check["agreement"] == 1.0
    assert check["fp32_auroc"] == check["int8_auroc"] == 1.0 and check["painted"] == 48
    assert check["median_painted_score_change"] == pytest.approx(0.001)


def test_a_collapsed_int8_network_is_refused_with_its_numbers():
    """Every image at -1.0, as NNCF made of FastFlow: AUROC 0.5, the painted defects all missed."""
    check = judge(_scores(), np.full(60, -1.0), KINDS, rule="bound", limits=DEFAULT_LIMITS)
    assert not check["passed"] and check["int8_auroc"] == 0.5
    line = refusal("fastflow", "x86", "openvino", check)
    assert "AUROC 1.000 -> 0.500" in line and "12 held-out normals" in line and "--precision fp16" in line
    assert "--max-drop 0.01" in line and "--painted-calibration 0.25" in line and "\n" not in line
    assert f"any score by a median {check['score_noise']:.1%} of the threshold" in line
    assert len(check["flips"]) == 48 and "decided differently lie +" in line and ", ... from the threshold" in line
    # the ways out not yet taken: more painted calibration than this export used
    assert "--painted-calibration 0.5," in refusal("fastflow", "rpi4", "tflite", check, painted=0.25)
    assert "--painted-calibration" not in refusal("fastflow", "x86", "openvino", check, painted=1.0)


def test_clipped_defect_scores_break_the_agreement_limit():
    fp32 = _scores()
    int8 = fp32.copy()
    int8[12:] = np.minimum(int8[12:], np.sort(fp32[12:])[6])  # most defects clipped to one value
    int8[12:18] = fp32[:6]  # and some now look normal
    check = judge(fp32, int8, KINDS, rule="bound", limits=DEFAULT_LIMITS)
    assert not check["passed"] and check["agreement"] < 0.98
    assert {flip["kind"] for flip in check["flips"]} <= {"scratch", "stain", "missing", "discolor"}
    assert all(flip["float_margin"] > 0 for flip in check["flips"])  # defects int8 now calls normal


def test_int8_score_noise_is_what_moves_besides_the_normals_common_shift():
    """A 2 % scale is a common shift; the ±0.3 on the normals is the noise, in units of the threshold."""
    fp32 = _scores(3)
    int8 = fp32 * 1.02
    int8[:12] += np.array([0.3, -0.3] * 6)
    check = judge(fp32, int8, KINDS, rule="bound", limits=DEFAULT_LIMITS)
    change = int8[:12] - fp32[:12]
    noise = np.median(np.abs(change - np.median(change))) / check["thresholds"]["fp32"]
    assert check["score_noise"] == pytest.approx(noise, abs=1e-6) and 0 < check["score_noise"] < 0.03
    assert check["thresholds"]["int8"] > check["thresholds"]["fp32"]  # each fitted on its own normal scores
    spread = np.std(int8[:12]) / np.std(fp32[:12]) - 1
    assert check["normal_spread_change"] == pytest.approx(spread, abs=1e-6) and spread > 0.02


def test_too_few_normals_are_measured_and_recorded_but_not_judged():
    kinds = ["normal"] * 2 + ["scratch"] * 8
    check = judge(np.arange(10.0), np.zeros(10), kinds, rule="bound", limits=DEFAULT_LIMITS)
    assert check["passed"] and not check["judged"] and check["threshold_rule"] == "max"


def test_recipe_limits_are_checked():
    assert limits_for({"int8_gate": {"max_auroc_drop": 0.05}}) == {**DEFAULT_LIMITS, "max_auroc_drop": 0.05}
    with pytest.raises(EdgekitError, match="int8_gate.min_agreement must be a number from 0 to 1"):
        limits_for({"int8_gate": {"min_agreement": 2}})
    assert painted_share({}) == 0.0 and painted_share({"painted_calibration": 0.25}) == 0.25
    with pytest.raises(EdgekitError, match="painted_calibration must be a share from 0 to 1"):
        painted_share({"painted_calibration": "a quarter"})


def test_the_painted_set_is_the_held_out_normals_and_never_a_test_image(patchcore_run, brick):
    from edgekit.data.datasets import open_dataset
    from edgekit.export.int8_gate import painted_set
    from edgekit.preprocess import fit_to, read_image

    spec = patchcore_run.input_spec()
    held = list(patchcore_run.record.held_out_images)
    images, kinds = painted_set(held, spec, seed=0)
    assert kinds[: len(held)] == ["normal"] * len(held) and len(images) == len(held) * 5
    for path, image in zip(held, images):
        np.testing.assert_array_equal(image, fit_to(read_image(path, 3), spec))
    assert set(kinds[len(held) :]) == {"scratch", "stain", "missing", "discolor"}
    test = {fit_to(read_image(s.path, 3), spec).tobytes() for s in open_dataset(brick).test}
    assert not test & {image.tobytes() for image in images}
    trained = {Path(p).resolve() for p in patchcore_run.record.trained_images}
    assert not trained & {Path(p).resolve() for p in held}


def test_an_int8_bundle_records_what_the_gate_measured(exported):
    import json

    check = json.loads((exported("x86", "openvino", "int8") / "manifest.json").read_text())["export"]["int8_check"]
    assert check["judged"] and check["passed"] and check["normals"] == 12 and check["painted"] == 48
    assert check["fp32_auroc"] - check["int8_auroc"] <= check["limits"]["max_auroc_drop"]


def test_max_drop_outside_int8_is_one_line_before_any_work(patchcore_run, tmp_path):
    from cli_helpers import run

    result = run("export", patchcore_run.path, "--precision", "fp32", "--max-drop", "0.01", "--out", tmp_path / "b")
    assert result.exit_code == 1 and "--max-drop steers int8 quantization, not fp32" in result.stderr
    assert not (tmp_path / "b").exists()


def test_painted_calibration_from_the_command_line_is_used_and_recorded(patchcore_run, tmp_path):
    import json

    from cli_helpers import run

    result = run("export", patchcore_run.path, "--precision", "int8", "--calibration-images", "8",
                 "--painted-calibration", "0.25", "--out", tmp_path / "b")  # fmt: skip
    assert result.exit_code == 0, result.output
    export = json.loads((tmp_path / "b" / "manifest.json").read_text())["export"]
    assert export["painted_calibration"] == {"share": 0.25, "images": 8}  # 2 of 8 normals, 4 defects each
    assert export["calibration_images"] == 16
    refused = run(
        "export", patchcore_run.path, "--precision", "int8", "--painted-calibration", "2", "--out", tmp_path / "c"
    )
    assert refused.exit_code == 2 and "--painted-calibration': 2.0 is not in the range 0.0<=x<=1.0" in refused.stderr
