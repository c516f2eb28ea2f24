"""`edgekit fit`: a bank built on the device from normal images, torch-free, written atomically."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fake_bundles import save_knn
from PIL import Image

import edgekit
from edgekit.bundle import HeadSpec, load_bundle, save_bundle, sha256_file
from edgekit.cli import cli
from edgekit.compress.coreset import coreset_count, coreset_indices
from edgekit.compress.pca import compress_bank
from edgekit.data.splits import split_normals
from edgekit.errors import EdgekitError
from edgekit.fit import fit_bundle, list_normals
from edgekit.preprocess import InputSpec, prepare
from edgekit.runtime.bank import decode_bank, encode_bank
from edgekit.runtime.decision import fit_decision

SPEC = InputSpec(height=32, width=32, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
POOL = 4


def _fake_features(images) -> np.ndarray:
    """What the fake network computes: the prepared image averaged over POOL×POOL blocks."""
    batch = prepare(images, SPEC)
    n, c, h, w = batch.shape
    return batch.reshape(n, c, h // POOL, POOL, w // POOL, POOL).mean(axis=(3, 5))


def _patches(embeddings: np.ndarray) -> np.ndarray:
    return embeddings.transpose(0, 2, 3, 1).reshape(-1, embeddings.shape[1])


@pytest.fixture(scope="module")
def normals(tmp_path_factory) -> Path:
    """Forty smooth random 32×32 colour images (8 held out: the default threshold rule's minimum)."""
    folder = tmp_path_factory.mktemp("normals")
    rng = np.random.default_rng(0)
    for index in range(40):
        coarse = rng.integers(60, 200, (4, 4, 3)).astype(np.uint8)
        Image.fromarray(coarse).resize((32, 32), Image.BILINEAR).save(folder / f"n{index:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def fake_bundle(tmp_path_factory) -> Path:
    """A kNN bundle on the fake runtime with an int8 bank of 40 random rows in the network's space."""
    return _fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


def _fake_bundle(out: Path, **params) -> Path:
    bank = np.random.default_rng(1).standard_normal((40, 3)).astype(np.float32)
    arrays = encode_bank(bank, "int8")
    head = HeadSpec(
        kind="knn",
        params={
            **params,
            "num_neighbors": 3,
            "blur_sigma": 1.0,
            "coreset_ratio": 0.25,
            "seed": 0,
            "bank": {
                "rows": 40,
                "dims": 3,
                "dtype": "int8",
                "settings": {"dims": "full", "dtype": "int8", "size": None},
            },
        },
        arrays={name: f"head/{name}.npy" for name in arrays},
    )
    encoded = {f"head/{name}.npy": array for name, array in arrays.items()}
    return save_knn(out, spec=SPEC, pool=POOL, head=head, arrays=encoded)


def test_fit_builds_the_bank_training_would_and_refits_thresholds(fake_bundle, normals, tmp_path):
    out = tmp_path / "fitted"
    fitted = fit_bundle(fake_bundle, normals, out=out)
    images = list_normals(normals)
    assert len(images) == 40  # the .txt file is not an image
    bank_idx, held_idx = split_normals(40, 0.2, 0)
    patches = _patches(_fake_features([images[i] for i in bank_idx]))
    count = coreset_count(len(patches), 0.25)
    expected = compress_bank(patches[coreset_indices(patches, count, seed=0)], dtype="int8")
    for name, array in expected.arrays.items():
        np.testing.assert_array_equal(fitted.array(name), array)
    bank = fitted.manifest.head.params["bank"]
    assert (bank["rows"], bank["dims"], bank["dtype"]) == (count, 3, "int8")
    assert bank["fitted"]["images"] == 32 and bank["fitted"]["held_out"] == 8 and bank["fitted"]["add"] is False
    assert sha256_file(out / "net.json") == sha256_file(fake_bundle / "net.json")  # network byte-identical
    detector = edgekit.load(out)
    held_scores, held_maps = detector.raw([images[i] for i in held_idx])
    identity = {"runtime": "fake", "version": "1", "machine": platform.machine()}
    assert fitted.manifest.decision == fit_decision(held_scores, held_maps, fitted_with=identity)
    assert fitted.manifest.decision.fitted_on == 8 and fitted.manifest.decision.rule == "bound"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing half-written left behind


def test_fit_records_source_date_epoch_as_its_created_time(fake_bundle, normals, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    fitted = fit_bundle(fake_bundle, normals, out=tmp_path / "fitted")
    assert fitted.manifest.head.params["bank"]["fitted"]["created"] == "2023-11-14T22:13:20+00:00"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "last week")
    with pytest.raises(EdgekitError, match="SOURCE_DATE_EPOCH='last week'"):
        fit_bundle(fake_bundle, normals, out=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_add_keeps_the_old_bank_and_adds_the_patches_farthest_from_it(fake_bundle, normals, tmp_path):
    old = decode_bank(
        {name: load_bundle(fake_bundle).array(name) for name in ("memory_bank", "bank_scale", "bank_offset")}, "int8"
    )
    added = fit_bundle(fake_bundle, normals, out=tmp_path / "added", add=True)
    images = list_normals(normals)
    bank_idx, _ = split_normals(40, 0.2, 0)
    patches = _patches(_fake_features([images[i] for i in bank_idx]))
    count = coreset_count(len(patches), 0.25)
    new = patches[coreset_indices(patches, count, seed=0, covered_by=old)]
    bank = decode_bank({name: added.array(name) for name in added.manifest.head.arrays}, "int8")
    assert bank.shape == (40 + count, 3) and added.manifest.head.params["bank"]["fitted"]["previous_rows"] == 40
    scale = added.array("bank_scale")
    assert np.all(np.abs(bank - np.concatenate([old, new])) <= scale * 0.5001)  # re-encoded with wider scales
    first_new = np.linalg.norm(patches - old[:, None], axis=-1).min(0).argmax()
    np.testing.assert_allclose(bank[40], patches[first_new], atol=float(scale.max()))


def test_fit_in_place_replaces_the_bundle_and_refuses_an_existing_out(fake_bundle, normals, tmp_path):
    copy = shutil.copytree(fake_bundle, tmp_path / "copy")
    fit_bundle(copy, normals)
    assert load_bundle(copy).manifest.head.params["bank"]["fitted"]["images"] == 32
    with pytest.raises(EdgekitError, match="already exists"):
        fit_bundle(fake_bundle, normals, out=copy)
    with pytest.raises(EdgekitError, match="holds no images"):
        fit_bundle(fake_bundle, tmp_path / "copy" / "head", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_fit_command_prints_one_line_and_errors_are_one_line(fake_bundle, normals, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["fit", str(fake_bundle), "--normals", str(normals), "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert "fitted patchcore bank" in result.output and "fitted on 8 held-out normals" in result.output
    result = runner.invoke(
        cli, ["fit", str(fake_bundle), "--normals", str(tmp_path / "none"), "--out", str(tmp_path / "c")]
    )
    assert result.exit_code == 1 and result.output.strip().startswith("error:") and "no such folder" in result.output
    assert len(result.output.strip().splitlines()) == 1


# --- the real bundle: runtime features vs torch features, torch absent --------------------------------------


def test_a_bank_trained_at_a_fixed_size_is_refitted_at_that_size(normals, tmp_path):
    """``edgekit train --coreset-rows N`` puts coreset_rows in the head: fitting on the device keeps N
    rows (not coreset_ratio of the patches); a malformed value is one clear error."""
    fixed = _fake_bundle(tmp_path / "fixed", coreset_rows=7)
    fitted = fit_bundle(fixed, normals, out=tmp_path / "fitted")
    assert fitted.manifest.head.params["bank"]["rows"] == 7 == coreset_count(8 * 64, 0.25, rows=7)
    broken = _fake_bundle(tmp_path / "broken", coreset_rows="7")
    with pytest.raises(EdgekitError, match="head param coreset_rows must be a positive integer, not '7'"):
        fit_bundle(broken, normals, out=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_coreset_count_is_the_ratio_of_the_patches_or_the_fixed_rows():
    assert coreset_count(1000, 0.1) == 100 and coreset_count(5, 0.01) == 1
    assert coreset_count(1000, 0.1, rows=300) == 300 and coreset_count(200, 0.1, rows=300) == 200


# --- thresholds: the minimum hold-out, edgekit threshold, the runtime that fitted them ----------------------


def _classes(root: Path, normals: int, anomalies: int) -> Path:
    """A classification tree: ok/ (smooth images) and red/ (a red square on them)."""
    rng = np.random.default_rng(3)
    for index in range(normals + anomalies):
        image = np.asarray(
            Image.fromarray(rng.integers(60, 200, (4, 4, 3)).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
        ).copy()
        folder = "ok" if index < normals else "red"
        if folder == "red":
            image[8:20, 8:20] = (250, 10, 10)
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / folder / f"{index:03d}.png")
    return root


def test_fit_with_too_few_normals_is_refused_before_any_work_unless_a_rule_is_named(fake_bundle, normals, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for source in list_normals(normals)[:10]:
        shutil.copy(source, few / source.name)
    with pytest.raises(EdgekitError, match="needs at least 8 held-out normal images, got 2"):
        fit_bundle(fake_bundle, few, out=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    fitted = fit_bundle(fake_bundle, few, out=tmp_path / "max", threshold_rule="max")
    assert fitted.manifest.decision.rule == "max" and fitted.manifest.decision.fitted_on == 2


def test_threshold_command_refits_by_rule_on_validation_data_and_records_it(fake_bundle, tmp_path):
    from edgekit.data.datasets import open_dataset

    data = _classes(tmp_path / "val", normals=40, anomalies=6)
    result = CliRunner().invoke(
        cli, ["threshold", str(fake_bundle), "--data", str(data), "--rule", "f1", "--out", str(tmp_path / "f1")]
    )
    assert result.exit_code == 0, result.output
    assert "by rule f1 on 8 normal and 6 anomalous validation images, fake 1" in result.output
    decision = load_bundle(tmp_path / "f1").manifest.decision
    test = open_dataset(data).test
    scores, maps = edgekit.load(fake_bundle).raw([s.path for s in test])
    labels = np.array([s.label for s in test])
    expected = fit_decision(scores[labels == 0], maps[labels == 0], rule="f1", anomalous_scores=scores[labels == 1])
    assert decision.image_threshold == expected.image_threshold
    assert np.all(scores[labels == 1] > decision.image_threshold)  # the red squares are caught
    assert decision.rule == "f1" and decision.fitted_with["runtime"] == "fake"
    assert decision.validation["normals"] == 8 and decision.validation["anomalies"] == 6
    assert decision.validation["fingerprint"].startswith("sha256:") and decision.validation["layout"] == "classes"
    assert sha256_file(tmp_path / "f1" / "net.json") == sha256_file(fake_bundle / "net.json")
    small = _classes(tmp_path / "small", normals=10, anomalies=2)
    result = CliRunner().invoke(cli, ["threshold", str(fake_bundle), "--data", str(small), "--rule", "bound"])
    assert result.exit_code == 1 and "needs at least 8 held-out normal images, got 2" in result.output
    assert "error:" in result.output and len(result.output.strip().splitlines()) == 1


def test_thresholds_fitted_under_another_runtime_version_are_said_on_load(fake_bundle, normals, tmp_path):
    import dataclasses
    import warnings

    from edgekit.bundle import load_bundle as open_bundle
    from edgekit.runtime.detector import ThresholdWarning

    source = open_bundle(fake_bundle)
    other = dataclasses.replace(
        source.manifest.decision, fitted_with={"runtime": "fake", "version": "0", "machine": "aarch64"}
    )
    moved = save_bundle(
        tmp_path / "moved",
        dataclasses.replace(source.manifest, decision=other),
        files={"net.json": fake_bundle / "net.json"},
        arrays={path: source.array(name) for name, path in source.manifest.head.arrays.items()},
    )
    with pytest.warns(ThresholdWarning, match=r"fitted under fake 0 on aarch64, this is fake 1 .* edgekit threshold"):
        edgekit.load(moved)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        edgekit.load(fake_bundle)  # nothing recorded: nothing said
    result = CliRunner().invoke(cli, ["predict", str(moved), str(list_normals(normals)[0])])
    assert result.exit_code == 0 and "note: bundle" in result.stderr and "fitted under fake 0" in result.stderr
