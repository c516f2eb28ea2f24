"""Every command through click's CliRunner; bad input gets one error line and exit code 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_error_line, run
from PIL import Image


@pytest.fixture()
def bundle_copy(x86_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(x86_bundle, tmp_path / "bundle"))


def _first(brick: Path, kind: str) -> Path:
    return sorted((brick / "test" / kind).iterdir())[0]


# -- predict --------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_predict_prints_json_and_writes_overlays(x86_bundle, brick, tmp_path):
    normal, stain = _first(brick, "good"), _first(brick, "stain")
    result = run("predict", x86_bundle, normal, stain, "--json", "--overlay", tmp_path / "overlays")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["is_anomalous"] for r in rows] == [False, True]
    assert rows[0]["score"] < 0.5 < rows[1]["score"]
    overlay = Image.open(rows[1]["overlay"])
    assert overlay.size == Image.open(stain).size and overlay.mode == "RGB"
    # the overlay is hotter (redder) inside the defect mask than outside it
    mask = np.asarray(Image.open(brick / "ground_truth" / "stain" / f"{stain.stem}_mask.png")) > 0
    red = np.asarray(overlay)[:, :, 0].astype(float) - np.asarray(overlay)[:, :, 2]
    assert red[mask].mean() > red[~mask].mean() + 20


@pytest.mark.e2e
def test_grey_image_given_to_a_colour_model_is_converted(x86_bundle, brick, tmp_path):
    grey = np.asarray(Image.open(_first(brick, "stain")).convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2)).save(tmp_path / "rgb.png")
    result = run("predict", x86_bundle, tmp_path / "grey.png", tmp_path / "rgb.png", "--json")
    assert result.exit_code == 0, result.output
    grey_row, rgb_row = json.loads(result.stdout)
    assert grey_row["raw_score"] == rgb_row["raw_score"]


@pytest.mark.e2e
def test_a_non_image_file_is_one_error_line(x86_bundle, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    assert_one_error_line(run("predict", x86_bundle, text), "notes.png", "not a readable image")


@pytest.mark.e2e
def test_a_missing_image_is_one_error_line(x86_bundle, tmp_path):
    assert_one_error_line(run("predict", x86_bundle, tmp_path / "nope.png"), "nope.png")


@pytest.mark.e2e
def test_a_tampered_bundle_is_refused(bundle_copy, brick):
    bank = bundle_copy / "head" / "memory_bank.npy"
    data = bytearray(bank.read_bytes())
    data[-5] ^= 0x01  # one bit of one bank value
    bank.write_bytes(bytes(data))
    assert_one_error_line(run("predict", bundle_copy, _first(brick, "good")), "memory_bank.npy")


@pytest.mark.e2e
def test_a_bundle_with_a_missing_file_is_refused(bundle_copy, brick):
    (bundle_copy / "model.bin").unlink()
    assert_one_error_line(run("predict", bundle_copy, _first(brick, "good")), "model.bin", "missing")


# -- train / export / data ---------------------------------------------------------------------------


def test_training_on_an_empty_folder_is_one_error_line_and_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("train", "--data", tmp_path / "empty", "--out", tmp_path / "run")
    assert_one_error_line(result, "empty")
    assert not (tmp_path / "run").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_training_on_a_tree_without_normal_images_is_refused(tmp_path):
    (tmp_path / "cat" / "train" / "good").mkdir(parents=True)
    (tmp_path / "cat" / "test" / "good").mkdir(parents=True)
    assert_one_error_line(run("train", "--data", tmp_path / "cat", "--out", tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_training_from_a_plain_folder_pair(brick, tmp_path):
    normal, abnormal = tmp_path / "ok", tmp_path / "bad"
    shutil.copytree(brick / "train" / "good", normal)
    shutil.copytree(brick / "test" / "stain", abnormal)
    result = run(
        "train", "--normal-dir", normal, "--abnormal-dir", abnormal, "--out", tmp_path / "run", "--image-size", "128"
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_images"] == 10 + 12  # the anomalies + the 20 % of normals moved to test
    assert metrics["image_auroc"] >= 0.9


def test_no_eval_trains_without_scoring_the_test_split(brick, tmp_path):
    result = run("train", "--model", "dfm", "--data", brick, "--out", tmp_path / "run", "--no-eval")
    assert result.exit_code == 0, result.output
    assert "training path" not in result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_split"] == "not scored (--no-eval)" and "image_auroc" not in metrics
    assert json.loads((tmp_path / "run" / "run.json").read_text())["model"] == "dfm"


def test_training_needs_exactly_one_data_source(brick, tmp_path):
    assert_one_error_line(run("train", "--out", tmp_path / "run"), "--data")
    assert_one_error_line(run("train", "--data", brick, "--normal-dir", brick, "--out", tmp_path / "run"), "either")


def test_an_unknown_backbone_gets_did_you_mean(brick, tmp_path):
    result = run("train", "--data", brick, "--out", tmp_path / "run", "--backbone", "tf_efficientnet_lite")
    assert_one_error_line(result, "did you mean")


def test_exporting_a_folder_that_is_not_a_run_is_refused(tmp_path):
    assert_one_error_line(run("export", tmp_path, "--out", tmp_path / "b"), "not a training run")
    assert not (tmp_path / "b").exists()


@pytest.mark.e2e
def test_an_unknown_target_gets_did_you_mean(patchcore_run, tmp_path):
    assert_one_error_line(
        run("export", patchcore_run.path, "--target", "x68", "--out", tmp_path / "b"), "did you mean 'x86'"
    )


@pytest.mark.e2e
def test_export_refuses_to_overwrite_without_the_flag(patchcore_run, x86_bundle):
    assert_one_error_line(run("export", patchcore_run.path, "--out", x86_bundle), "already exists")


def test_data_synth_writes_a_readable_dataset(tmp_path):
    result = run("data", "synth", "--out", tmp_path, "--texture", "gravel", "--size", "64", "--grayscale")
    assert result.exit_code == 0, result.output
    from edgekit.data.datasets import open_dataset

    dataset = open_dataset(tmp_path / "gravel")
    assert len(dataset.train) == 60 and len(dataset.test) == 60
    assert Image.open(dataset.test[0].path).mode == "L"


# -- profile / demo -----------------------------------------------------------------------------------


@pytest.mark.e2e
def test_profile_for_the_wrong_target_is_refused(x86_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert_one_error_line(run("profile", x86_bundle, "--out", tmp_path), "this machine is aarch64, not x86's")
    assert not (tmp_path / "profile.json").exists()


@pytest.mark.e2e
def test_demo_runs_the_whole_path(tmp_path):
    result = run("demo", "--workdir", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    profile = json.loads((tmp_path / "demo" / "report" / "profile.json").read_text())
    (variant,) = profile["variants"]
    assert variant["accuracy"]["image_auroc"] >= 0.95
    assert variant["bundle"]["target"] == "x86" and variant["bundle"]["precision"] == "fp32"
    assert (tmp_path / "demo" / "report" / "report.html").is_file()
    assert "report:" in result.stdout
