"""`edgekit check`: the CI gate compares two bundles on labelled data and fails on broken limits.

Fast tests on the fake runtime (no OpenVINO): a tiny MVTec-layout dataset of smooth 32×32 normals
and anomalies with a saturated red square; the gate against the real fp32/int8 bundles is in
test_quantize.py.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fake_bundles import save_knn
from PIL import Image

from edgekit.bundle import Decision, load_bundle
from edgekit.check import check_bundles, junit_xml, render_table, write_junit
from edgekit.cli import cli
from edgekit.errors import EdgekitError
from edgekit.preprocess import InputSpec, prepare
from edgekit.runtime.decision import fit_decision
from edgekit.runtime.detector import load

SPEC = InputSpec(height=32, width=32, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
POOL = 4


def _smooth(rng: np.random.Generator) -> np.ndarray:
    coarse = rng.integers(80, 180, (4, 4, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((32, 32), Image.BILINEAR))


def _anomalous(rng: np.random.Generator) -> np.ndarray:
    image = _smooth(rng).copy()
    image[8:16, 8:16] = (255, 0, 0)
    return image


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """train/good: 16 normals; test/good: 6 normals; test/red: 6 anomalies with masks (MVTec layout)."""
    root = tmp_path_factory.mktemp("check-data") / "tiny"
    rng = np.random.default_rng(0)
    for folder, count, make in (("train/good", 16, _smooth), ("test/good", 6, _smooth), ("test/red", 6, _anomalous)):
        (root / folder).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(make(rng)).save(root / folder / f"{index:03d}.png")
    (root / "ground_truth" / "red").mkdir(parents=True)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 255
    for index in range(6):
        Image.fromarray(mask).save(root / "ground_truth" / "red" / f"{index:03d}_mask.png")
    return root


def _features(paths) -> np.ndarray:
    """What the fake network computes: the prepared image averaged over POOL×POOL blocks."""
    batch = prepare(paths, SPEC)
    n, c, h, w = batch.shape
    return batch.reshape(n, c, h // POOL, POOL, w // POOL, POOL).mean(axis=(3, 5))


def _save(dest: Path, bank: np.ndarray, decision: Decision | None = None, *, precision: str = "fp32") -> Path:
    return save_knn(dest, bank, spec=SPEC, pool=POOL, decision=decision, precision=precision, overwrite=True)


def _fitted(dest: Path, bank: np.ndarray, holdout: list[Path], *, precision: str = "fp32") -> Path:
    """A bundle whose thresholds are fitted on ``holdout`` through its own runtime, like an export."""
    _save(dest, bank, precision=precision)
    return _save(dest, bank, fit_decision(*load(dest).raw(holdout)), precision=precision)


@pytest.fixture(scope="module")
def bundles(dataset, tmp_path_factory) -> dict[str, Path]:
    """reference; an equal candidate; one with an off threshold; one whose bank learnt the defect."""
    folder = tmp_path_factory.mktemp("check-bundles")
    train = sorted((dataset / "train" / "good").glob("*.png"))
    bank_images, holdout = train[:8], train[8:]
    features = _features(bank_images)
    bank = np.ascontiguousarray(features.transpose(0, 2, 3, 1).reshape(-1, 3), dtype=np.float32)
    reference = _fitted(folder / "reference", bank, holdout)
    equal = _fitted(folder / "equal", bank, holdout, precision="int8")
    decision = load_bundle(reference).manifest.decision
    low_threshold = _save(
        folder / "low-threshold", bank, dataclasses.replace(decision, image_threshold=decision.image_center)
    )
    red = _features(sorted((dataset / "test" / "red").glob("*.png"))[:1]).transpose(0, 2, 3, 1).reshape(-1, 3)
    learnt_defect = _fitted(folder / "learnt-defect", np.concatenate([bank, red]).astype(np.float32), holdout)
    return {"reference": reference, "equal": equal, "low-threshold": low_threshold, "learnt-defect": learnt_defect}


def test_equal_candidate_passes_with_full_agreement(bundles, dataset):
    result = check_bundles(bundles["reference"], bundles["equal"], dataset)
    assert result.images == 12 and int(result.labels.sum()) == 6
    assert result.reference.auroc == result.candidate.auroc == 1.0
    assert result.auroc_drop == 0.0 and result.agreement == 1.0 and result.max_score_difference == 0.0
    assert result.passed and result.failures == []
    table = render_table(result)
    assert "x86 / int8" in table and "100.0% (12/12)" in table and table.endswith("result: PASS")


def test_threshold_at_the_normal_centre_breaks_the_agreement_limit_only(bundles, dataset):
    result = check_bundles(bundles["reference"], bundles["low-threshold"], dataset)
    assert result.auroc_drop == 0.0  # same raw scores, same AUROC
    # about half the normals sit above their median: those decisions flip, anomalies stay anomalous
    assert 1 <= result.disagreements <= 6
    assert result.reference.decisions[result.labels].all() and result.candidate.decisions[result.labels].all()
    assert result.agreement == pytest.approx(1 - result.disagreements / 12)
    assert not result.passed and len(result.failures) == 1 and "decisions agree on" in result.failures[0]
    # each flip named, with where it sat: below the reference's threshold, above the candidate's
    differing = result.differing()
    assert len(differing) == result.disagreements
    for name, anomalous, ref_margin, cand_margin in differing:
        assert name.startswith("test/good/") and not anomalous and ref_margin < 0 < cand_margin
    table = render_table(result)
    name, _, ref_margin, cand_margin = differing[0]
    assert (
        f"decided differently: {name} (normal); raw score vs each bundle's threshold: "
        f"reference {ref_margin:+.2%}, candidate {cand_margin:+.2%}" in table
    )


def test_borderline_flips_are_listed_but_not_judged(bundles, dataset):
    """Flips of images whose reference score lies within --borderline of its threshold count as
    agreeing; one just outside counts again."""
    plain = check_bundles(bundles["reference"], bundles["low-threshold"], dataset)
    margins = sorted(abs(ref) for _, _, ref, _ in plain.differing())
    excused = check_bundles(bundles["reference"], bundles["low-threshold"], dataset, borderline=margins[-1] + 1e-6)
    assert excused.passed and excused.judged_agreement == 1.0 and excused.agreement == plain.agreement
    assert excused.borderline_disagreements == plain.disagreements and len(excused.differing()) == plain.disagreements
    table = render_table(excused)
    assert f"with {plain.disagreements} within" in table and "not counted" in table and table.endswith("PASS")
    strict = check_bundles(bundles["reference"], bundles["low-threshold"], dataset, borderline=margins[0] - 1e-6)
    assert strict.borderline_disagreements == 0 and strict.judged_agreement == plain.agreement and not strict.passed
    properties = {
        p.get("name"): p.get("value") for p in ET.fromstring(junit_xml(excused).split("\n", 1)[1]).iter("property")
    }
    assert properties["judged_agreement"] == "1.000000" and float(properties["borderline"]) == pytest.approx(
        excused.borderline, rel=1e-5
    )


def test_a_bank_that_learnt_the_defect_breaks_the_auroc_limit(bundles, dataset):
    result = check_bundles(bundles["reference"], bundles["learnt-defect"], dataset)
    assert result.candidate.auroc < 0.9  # anomalies now find close neighbours in the bank
    assert result.auroc_drop == pytest.approx(1.0 - result.candidate.auroc)
    assert any("image AUROC dropped by" in failure for failure in result.failures)
    # a limit loose enough lets the same candidate through
    loose = check_bundles(
        bundles["reference"], bundles["learnt-defect"], dataset, max_auroc_drop=1.0, min_agreement=0.0
    )
    assert loose.passed


def test_cli_exits_0_when_the_limits_hold_and_1_when_one_breaks(bundles, dataset, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(
        cli,
        [
            "check",
            "--reference",
            str(bundles["reference"]),
            "--candidate",
            str(bundles["equal"]),
            "--data",
            str(dataset),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "decision agreement" in ok.output and "result: PASS" in ok.output
    junit = tmp_path / "reports" / "check.xml"
    failed = runner.invoke(
        cli,
        [
            "check",
            "--reference",
            str(bundles["reference"]),
            "--candidate",
            str(bundles["learnt-defect"]),
            "--data",
            str(dataset),
            "--junit",
            str(junit),
        ],
    )
    assert failed.exit_code == 1
    assert "result: FAIL - image AUROC dropped by" in failed.output
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "2" and suite.get("failures") == "2"
    assert [p.get("name") for p in suite.iter("property")][:3] == ["reference", "candidate", "data"]
    assert sorted(junit.parent.iterdir()) == [junit]  # no temporary file left beside it


def test_junit_marks_only_the_broken_limit_as_failure(bundles, dataset):
    result = check_bundles(bundles["reference"], bundles["low-threshold"], dataset)
    suite = ET.fromstring(junit_xml(result).split("\n", 1)[1])
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert suite.get("failures") == "1"
    assert cases["image AUROC drop <= 0.01"].find("failure") is None
    failure = cases["decision agreement >= 0.98"].find("failure")
    assert failure is not None and f"{result.disagreements} of 12 decisions differ" in failure.get("message")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--candidate", "missing-bundle"], "missing-bundle"),
        (["--max-auroc-drop", "-0.1"], "--max-auroc-drop must be between 0 and 1"),
        (["--min-agreement", "98"], "--min-agreement must be between 0 and 1"),
        (["--borderline", "1"], "--borderline must be from 0 to below 1"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(bundles, dataset, tmp_path, args, message):
    base = {"--reference": str(bundles["reference"]), "--candidate": str(bundles["equal"]), "--data": str(dataset)}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = str(tmp_path / value) if value == "missing-bundle" else value
    junit = tmp_path / "check.xml"
    result = CliRunner().invoke(cli, ["check", *[x for pair in base.items() for x in pair], "--junit", str(junit)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not junit.exists()


def test_data_without_anomalies_is_refused(bundles, dataset, tmp_path):
    only_normals = tmp_path / "normals"
    for folder in ("train/good", "test/good"):
        (only_normals / folder).mkdir(parents=True)
        for image in sorted((dataset / folder).glob("*.png"))[:3]:
            (only_normals / folder / image.name).write_bytes(image.read_bytes())
    with pytest.raises(EdgekitError, match="both normal and anomalous"):
        check_bundles(bundles["reference"], bundles["equal"], only_normals)


def test_write_junit_refuses_a_folder_and_replaces_a_file_atomically(bundles, dataset, tmp_path):
    result = check_bundles(bundles["reference"], bundles["equal"], dataset)
    with pytest.raises(EdgekitError, match="is a folder"):
        write_junit(result, tmp_path)
    target = tmp_path / "junit.xml"
    target.write_text("old")
    write_junit(result, target)
    assert ET.parse(target).getroot().get("failures") == "0"
    assert [p.name for p in tmp_path.iterdir()] == ["junit.xml"]
