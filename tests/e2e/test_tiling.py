"""Tiling for high-resolution images: small defects on 512x512 images that a 128-pixel resize shrinks
away are found on a 4x4 grid of 128-pixel tiles; the bundle cuts, runs and stitches the tiles as the
training path does, on the host's runtimes and through the int8 gate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import run


@pytest.fixture(scope="module")
def high_res(tmp_path_factory):
    from edgekit.data.high_res import write_high_res

    root = tmp_path_factory.mktemp("high-res")
    return write_high_res(root / "brick", size=512, window=4, n_train=12, n_test_good=6, n_per_defect=2)


@pytest.fixture(scope="module")
def runs(high_res, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiling-runs")
    common = ("train", "--model", "dfm", "--data", high_res, "--image-size", "128")
    plain = run(*common, "--out", root / "plain")
    tiled = run(*common, "--out", root / "tiled", "--tiles", "4x4")
    assert plain.exit_code == 0 and tiled.exit_code == 0, plain.output + tiled.output
    return root / "plain", root / "tiled"


def _metrics(path) -> dict:
    return json.loads((path / "metrics.json").read_text())


@pytest.mark.e2e
def test_tiles_find_the_small_defects_a_resize_shrinks_away(runs):
    plain, tiled = (_metrics(path) for path in runs)
    assert tiled["image_auroc"] >= 0.95 and plain["image_auroc"] <= 0.75
    assert tiled["pixel_auroc"] > plain["pixel_auroc"] + 0.1
    spec = json.loads((runs[1] / "run.json").read_text())["input"]
    assert (spec["tiles"], spec["tile_overlap"]) == ([4, 4], 16)  # the default overlap: an eighth of 128


@pytest.mark.e2e
@pytest.mark.parametrize("target, fmt", [("x86", "openvino"), ("rpi4", "onnx"), ("rpi4", "tflite")])
def test_a_tiled_bundle_scores_and_stitches_as_the_training_path(runs, high_res, tmp_path, target, fmt):
    import edgekit
    from edgekit.data.datasets import open_dataset
    from edgekit.families.dfm.train import score_run
    from edgekit.train.run import open_run

    bundle = tmp_path / "b"
    exported = run("export", runs[1], "--target", target, "--format", fmt, "--precision", "fp32",
                   "--threshold-rule", "max", "--out", bundle)  # fmt: skip
    assert exported.exit_code == 0, exported.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["input"]["tiles"] == [4, 4] and manifest["input"]["tile_overlap"] == 16
    images = [s.path for s in open_dataset(high_res).test]
    train_scores, train_maps = score_run(open_run(runs[1]), images)
    with edgekit.load(bundle) as detector:
        scores, maps = detector.raw(images)
        prediction = detector.predict(images[0])
    assert maps.shape == train_maps.shape == (len(images), 464, 464)  # 4 x 128 - 3 x 16
    assert prediction.anomaly_map.shape == (464, 464)
    np.testing.assert_allclose(scores, train_scores, rtol=2e-3)
    assert np.abs(maps - train_maps).max() <= 2e-3 * np.abs(train_maps).max()


@pytest.mark.e2e
def test_an_int8_tiled_bundle_is_judged_by_the_gate_on_painted_tiles(runs, tmp_path):
    exported = run("export", runs[1], "--target", "x86", "--precision", "int8", "--threshold-rule", "max",
                   "--out", tmp_path / "b")  # fmt: skip
    assert exported.exit_code == 0, exported.output
    check = json.loads((tmp_path / "b" / "manifest.json").read_text())["export"]["int8_check"]
    assert (check["normals"], check["painted"]) == (2, 8)  # 2 held-out normals, each with 4 defects painted on
    assert check["passed"] and check["int8_auroc"] >= check["fp32_auroc"] - 0.01


@pytest.mark.e2e
@pytest.mark.parametrize(
    "flags, message",
    [
        (("--tiles", "4x"), "--tiles must be rows x columns, e.g. 4x4, not '4x'"),
        (("--tiles", "17x1"), "input tiles must be rows,columns from 1 to 16 each"),
        (("--tiles", "2x2", "--tile-overlap", "100"), "tile_overlap must be a whole number of pixels from 0 to 64"),
        (("--tile-overlap", "8"), "--tile-overlap goes with --tiles"),
    ],
)
def test_bad_tiles_are_one_line_and_leave_no_run(high_res, tmp_path, flags, message):
    result = run("train", "--model", "dfm", "--data", high_res, "--image-size", "128", "--out", tmp_path / "r", *flags)
    assert result.exit_code == 1 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.e2e
def test_patchcore_banks_every_tiles_patches_and_fit_refits_a_tiled_bundle(high_res, tmp_path):
    """The coreset counts the patches of every tile; ``edgekit fit`` on the training normals embeds
    each image's tiles, splits whole images as training did, and scores as the training path."""
    import edgekit
    from edgekit.data.datasets import open_dataset
    from edgekit.fit import fit_bundle
    from edgekit.metrics import image_auroc

    trained = run("train", "--model", "patchcore", "--data", high_res, "--image-size", "128", "--tiles", "2x2",
                  "--out", tmp_path / "run")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    config = json.loads((tmp_path / "run" / "run.json").read_text())
    grid = config["grid"][0] * config["grid"][1]
    assert config["patches_seen"] == len(config["bank_images"]) * 4 * grid
    assert config["bank_rows"] == round(0.1 * config["patches_seen"])
    exported = run("export", tmp_path / "run", "--target", "x86", "--threshold-rule", "max", "--out", tmp_path / "b")
    assert exported.exit_code == 0, exported.output
    fit_bundle(tmp_path / "b", high_res / "train" / "good", out=tmp_path / "fitted", threshold_rule="max")
    manifest = json.loads((tmp_path / "fitted" / "manifest.json").read_text())
    fitted = manifest["head"]["params"]["bank"]["fitted"]
    assert (fitted["images"], fitted["held_out"], fitted["patches"]) == (10, 2, 10 * 4 * grid)
    test = open_dataset(high_res).test
    labels = [s.label for s in test]
    aurocs = []
    for bundle in (tmp_path / "b", tmp_path / "fitted"):  # the bank export compressed, and the one fit made
        with edgekit.load(bundle) as detector:
            scores, maps = detector.raw([s.path for s in test])
        assert maps.shape[1:] == (240, 240)  # 2 x 128 - 16
        aurocs.append(image_auroc(labels, scores))
    assert aurocs[1] == pytest.approx(aurocs[0], abs=0.02) and aurocs[1] >= 0.9
