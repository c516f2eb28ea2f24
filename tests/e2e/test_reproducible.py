"""Reproducible artefacts: a run's fingerprint names its content, and exporting one run twice with
SOURCE_DATE_EPOCH set gives byte-identical bundles (the network files included)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgekit.bundle import DIGEST_NAME, MANIFEST_NAME, sha256_file
from edgekit.clock import created_time
from edgekit.errors import EdgekitError
from edgekit.export.job import ExportOptions
from edgekit.export.pipeline import export_run
from edgekit.train.run import RUN_FILE, open_run
from tests.cli_helpers import assert_one_error_line, run

EPOCH = "1700000000"
EPOCH_ISO = "2023-11-14T22:13:20+00:00"


@pytest.fixture(scope="module")
def twin_runs(brick, tmp_path_factory):
    """Two PatchCore trainings of the default data with one seed, at 64² to stay cheap."""
    from edgekit.families.patchcore.train import train_patchcore

    folder = tmp_path_factory.mktemp("twins")
    return tuple(train_patchcore(brick, folder / name, image_size=64) for name in ("first", "second"))


def _copy_run(run, dest: Path):
    shutil.copytree(run.path, dest)
    return open_run(dest)


def _edit_run_json(path: Path, **changes) -> None:
    config = json.loads((path / RUN_FILE).read_text())
    (path / RUN_FILE).write_text(json.dumps({**config, **changes}, indent=2, sort_keys=True) + "\n")


def test_two_trainings_with_one_seed_have_one_fingerprint(twin_runs):
    first, second = twin_runs
    assert first.path != second.path
    assert first.fingerprint() == second.fingerprint()
    for name in ("network.safetensors", "memory_bank.npy", "metrics.json"):  # what it rests on
        assert sha256_file(first.path / name) == sha256_file(second.path / name)


def test_the_fingerprint_ignores_when_and_by_which_version_a_run_was_made(twin_runs, tmp_path):
    copy = _copy_run(twin_runs[0], tmp_path / "run")
    _edit_run_json(copy.path, created="1999-01-01T00:00:00+00:00", train_seconds=12345.0, edgekit_version="0.0.1")
    assert open_run(copy.path).fingerprint() == twin_runs[0].fingerprint()


def test_a_changed_bank_byte_or_setting_changes_the_fingerprint(twin_runs, tmp_path):
    original = twin_runs[0].fingerprint()
    flipped = _copy_run(twin_runs[0], tmp_path / "flipped")
    bank = bytearray((flipped.path / "memory_bank.npy").read_bytes())
    bank[-1] ^= 0x01  # the last byte of the last row: header intact, one value changed
    (flipped.path / "memory_bank.npy").write_bytes(bytes(bank))
    assert flipped.fingerprint() != original
    changed = _copy_run(twin_runs[0], tmp_path / "changed")
    _edit_run_json(changed.path, num_neighbors=int(changed.config["num_neighbors"]) + 1)
    assert open_run(changed.path).fingerprint() != original


def test_the_same_data_in_another_folder_gives_the_same_fingerprint(twin_runs, tmp_path):
    copy = _copy_run(twin_runs[0], tmp_path / "run")
    old = copy.config["dataset"]["path"]
    new = str(tmp_path / "elsewhere" / "brick")
    config = json.loads(
        (copy.path / RUN_FILE).read_text().replace(old + "/", new + "/").replace(f'"{old}"', f'"{new}"')
    )
    assert config["dataset"]["path"] == new and config["bank_images"][0].startswith(new + "/")
    (copy.path / RUN_FILE).write_text(json.dumps(config))
    assert open_run(copy.path).fingerprint() == twin_runs[0].fingerprint()


@pytest.mark.parametrize(
    "target, fmt, precision",
    [("x86", "openvino", "fp32"), ("x86", "openvino", "int8"), ("rpi4", "tflite", "fp32"), ("rpi4", "onnx", "fp32")],
)
def test_two_exports_of_one_run_are_byte_identical(twin_runs, tmp_path, monkeypatch, target, fmt, precision):
    """In one process, so OpenVINO's node counter has moved on between them (its names used to leak)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    options = ExportOptions(format=fmt, precision=precision, calibration_images=8)
    bundles = [
        export_run(twin_runs[0].path, tmp_path / f"{name}.edgekit", target=target, options=options)
        for name in ("first", "second")
    ]
    first, second = (tmp_path / "first.edgekit", tmp_path / "second.edgekit")
    assert first.read_bytes() == second.read_bytes()
    assert bundles[0].manifest_sha256 == bundles[1].manifest_sha256
    manifest = bundles[0].manifest
    assert manifest.export["created"] == EPOCH_ISO
    assert manifest.source["run_fingerprint"] == twin_runs[0].fingerprint() == twin_runs[1].fingerprint()
    assert "seconds" not in manifest.export  # a duration would differ between any two exports


def test_exports_of_twin_trainings_differ_only_in_the_run_they_name(twin_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    bundles = [
        export_run(run.path, tmp_path / run.path.name, target="rpi4", options=ExportOptions(format="onnx"))
        for run in twin_runs
    ]
    first, second = (b.root for b in bundles)
    assert sorted(p.name for p in first.rglob("*")) == sorted(p.name for p in second.rglob("*"))
    for path in first.rglob("*"):
        if path.is_file() and path.name not in (MANIFEST_NAME, DIGEST_NAME):
            assert path.read_bytes() == (second / path.relative_to(first)).read_bytes(), path.name
    manifests = [json.loads((b.root / MANIFEST_NAME).read_text()) for b in bundles]
    for manifest in manifests:
        manifest["source"].pop("run")
    assert manifests[0] == manifests[1]


def test_source_date_epoch_is_the_created_time(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    assert created_time() == EPOCH_ISO
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert created_time() == "1970-01-01T00:00:00+00:00"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "")  # empty counts as unset: now
    assert created_time().endswith("+00:00") and created_time() != "1970-01-01T00:00:00+00:00"


@pytest.mark.parametrize("value", ["yesterday", "1.5", " 1700000000", "1e9", "٣", "99999999999999999999"])
def test_a_malformed_source_date_epoch_is_one_clear_error(monkeypatch, value):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    with pytest.raises(EdgekitError, match="SOURCE_DATE_EPOCH"):
        created_time()


def test_export_and_train_refuse_a_bad_source_date_epoch_before_any_work(twin_runs, brick, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "tomorrow")
    exported = run("export", twin_runs[0].path, "--target", "x86", "--out", tmp_path / "bundle.edgekit")
    assert_one_error_line(exported, "SOURCE_DATE_EPOCH='tomorrow'", "seconds since the epoch")
    trained = run("train", "--data", brick, "--out", tmp_path / "run", "--image-size", 64)
    assert_one_error_line(trained, "SOURCE_DATE_EPOCH='tomorrow'")
    assert sorted(tmp_path.iterdir()) == []  # nothing written, not even staging
