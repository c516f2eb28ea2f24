"""The embedded default data generator: layout, determinism, disjoint crops, exact visible defects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.data import open_dataset, synth, synthesize
from edgekit.errors import EdgekitError

SMALL = dict(size=64, n_train=3, n_test_good=2, n_per_defect=2)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _manifest(category: Path) -> dict:
    return json.loads((category / "synth.json").read_text())


def test_writes_mvtec_layout_with_expected_counts_and_binary_masks(tmp_path):
    (category,) = synth.synthesize(tmp_path, texture="grass", **SMALL)
    assert category == tmp_path / "grass"
    assert sorted(p.name for p in (category / "train" / "good").iterdir()) == ["000.png", "001.png", "002.png"]
    assert len(list((category / "test" / "good").iterdir())) == 2
    for kind in synth.DEFECT_KINDS:
        images = sorted(p.name for p in (category / "test" / kind).iterdir())
        masks = sorted(p.name for p in (category / "ground_truth" / kind).iterdir())
        assert images == ["000.png", "001.png"]
        assert masks == ["000_mask.png", "001_mask.png"]
        with Image.open(category / "test" / kind / "000.png") as image:
            assert (image.mode, image.size) == ("RGB", (64, 64))
        mask = np.asarray(Image.open(category / "ground_truth" / kind / "000_mask.png"))
        assert mask.shape == (64, 64) and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 255}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_same_arguments_give_byte_identical_files(tmp_path):
    synth.synthesize(tmp_path / "a", texture="brick", seed=3, **SMALL)
    synth.synthesize(tmp_path / "b", texture="brick", seed=3, **SMALL)
    first, second = _files(tmp_path / "a" / "brick"), _files(tmp_path / "b" / "brick")
    assert len(first) == 3 + 2 + 4 * 2 * 2 + 1
    assert first == second


def test_another_seed_gives_other_images(tmp_path):
    synth.synthesize(tmp_path / "a", texture="brick", seed=0, **SMALL)
    synth.synthesize(tmp_path / "b", texture="brick", seed=1, **SMALL)
    image = "train/good/000.png"
    assert (tmp_path / "a" / "brick" / image).read_bytes() != (tmp_path / "b" / "brick" / image).read_bytes()


def test_grayscale_128_is_single_channel_and_matches_colour_luma(tmp_path):
    synth.synthesize(
        tmp_path / "grey", texture="brick", size=128, grayscale=True, n_train=2, n_test_good=1, n_per_defect=0
    )
    synth.synthesize(tmp_path / "rgb", texture="brick", size=128, n_train=2, n_test_good=1, n_per_defect=0)
    grey_image = Image.open(tmp_path / "grey" / "brick" / "train" / "good" / "001.png")
    assert (grey_image.mode, grey_image.size) == ("L", (128, 128))
    colour = np.asarray(Image.open(tmp_path / "rgb" / "brick" / "train" / "good" / "001.png")).astype(float)
    luma = colour @ np.array([0.299, 0.587, 0.114])
    assert np.abs(luma - np.asarray(grey_image, dtype=float)).mean() < 1.0
    assert not (tmp_path / "grey" / "brick" / "ground_truth").exists()


def test_train_and_test_crops_come_from_disjoint_photo_regions(tmp_path):
    (category,) = synth.synthesize(tmp_path, texture="gravel", size=32, n_train=40, n_test_good=10, n_per_defect=3)
    images = _manifest(category)["images"]
    train_boxes = [tuple(r["box"]) for r in images if r["image"].startswith("train/")]
    test_boxes = [tuple(r["box"]) for r in images if r["image"].startswith("test/")]
    assert (len(train_boxes), len(test_boxes)) == (40, 10 + 4 * 3)
    assert not any(synth.boxes_overlap(a, b) for a in train_boxes for b in test_boxes)
    x0, y0, x1, y1 = synth.TEST_REGION
    assert all(x0 <= b[0] and y0 <= b[1] and b[2] <= x1 and b[3] <= y1 for b in test_boxes)
    assert all(b[2] - b[0] == b[3] - b[1] == synth.CROP_SIDE for b in train_boxes + test_boxes)


def test_train_crop_boxes_never_touch_the_test_region_over_many_draws():
    boxes = synth.train_crop_boxes(np.random.default_rng(7), 2000)
    assert not any(synth.boxes_overlap(box, synth.TEST_REGION) for box in boxes)
    assert min(b[0] for b in boxes) == 0 and max(b[2] for b in boxes) == synth.PHOTO_SIDE


@pytest.mark.parametrize("kind", synth.DEFECT_KINDS)
@pytest.mark.parametrize("channels", [1, 3])
def test_defect_mask_is_exactly_the_changed_pixels_and_visible(kind, channels):
    photo = synth._load_photo("grass")
    gains = synth._colour_gains("grass") if channels == 3 else None
    filler = synth._render(synth._load_photo("brick"), (300, 300, 460, 460), (False, False), 96, gains)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        image = synth._render(photo, (0, 0, 160, 160), (False, False), 96, gains)
        defective, mask = synth.apply_defect(image, kind, rng, filler=filler)
        changed = (defective != image).any(axis=-1) if channels == 3 else defective != image
        assert np.array_equal(changed, mask)
        contrast, area = synth.defect_visibility(image, defective, mask)
        assert contrast >= synth.MIN_CONTRAST
        assert synth.AREA_FRACTION[0] <= area <= synth.AREA_FRACTION[1]


@pytest.mark.parametrize("kind", synth.DEFECT_KINDS)
def test_draws_too_faint_on_a_black_image_are_redrawn_until_visible(kind):
    black = np.zeros((64, 64, 3), dtype=np.uint8)
    for seed in range(8):
        defective, mask = synth.apply_defect(black, kind, np.random.default_rng(seed))
        contrast, _ = synth.defect_visibility(black, defective, mask)
        assert contrast >= synth.MIN_CONTRAST


def test_written_defects_record_their_visibility_and_mask_area(tmp_path):
    (category,) = synth.synthesize(tmp_path, texture="brick", **SMALL)
    defects = [r for r in _manifest(category)["images"] if "defect" in r]
    assert len(defects) == 8
    for record in defects:
        mask = np.asarray(Image.open(category / record["mask"])) > 0
        assert mask.mean() == pytest.approx(record["area_fraction"], abs=1e-5)
        assert record["contrast"] >= synth.MIN_CONTRAST


def test_refuses_a_non_empty_destination_and_overwrite_replaces_only_its_own(tmp_path):
    (tmp_path / "brick").mkdir()
    (tmp_path / "brick" / "notes.txt").write_text("mine")
    with pytest.raises(EdgekitError, match="already exists"):
        synth.synthesize(tmp_path, texture="brick", **SMALL)
    with pytest.raises(EdgekitError, match="not an edgekit synthetic dataset"):
        synth.synthesize(tmp_path, texture="brick", overwrite=True, **SMALL)
    assert (tmp_path / "brick" / "notes.txt").read_text() == "mine"
    (tmp_path / "brick" / "notes.txt").unlink()
    synth.synthesize(tmp_path, texture="brick", **SMALL)
    (tmp_path / "brick" / "stale.txt").write_text("old")
    synth.synthesize(tmp_path, texture="brick", overwrite=True, **SMALL)
    assert not (tmp_path / "brick" / "stale.txt").exists()
    assert (tmp_path / "brick" / "train" / "good" / "000.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brick"]


def test_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    real_save, calls = synth._save_png, []

    def failing_save(path, pixels):
        calls.append(path)
        if len(calls) == 20:
            raise OSError("disk full")
        real_save(path, pixels)

    monkeypatch.setattr(synth, "_save_png", failing_save)
    with pytest.raises(OSError):
        synth.synthesize(tmp_path, texture="all", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_all_writes_three_categories_and_reports_progress(tmp_path):
    reports = []
    folders = synth.synthesize(
        tmp_path, texture="all", progress=lambda done, total: reports.append((done, total)), **SMALL
    )
    assert [f.name for f in folders] == list(synth.TEXTURES)
    per_texture = 3 + 2 + 4 * 2
    assert reports == [(i, 3 * per_texture) for i in range(1, 3 * per_texture + 1)]


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(texture="marble"), "unknown texture 'marble'"),
        (dict(size=16), "size must be between 32 and 1024"),
        (dict(n_train=0), "at least 1 train image"),
    ],
)
def test_bad_arguments_raise_one_line_errors(tmp_path, options, message):
    with pytest.raises(EdgekitError, match=message):
        synth.synthesize(tmp_path, **options)
    assert list(tmp_path.iterdir()) == []


def test_reads_what_synthesize_writes(tmp_path):
    synthesize(tmp_path, texture="brick", size=64, n_train=4, n_test_good=3, n_per_defect=2)
    dataset = open_dataset(tmp_path / "brick")
    assert (dataset.name, len(dataset.train), len(dataset.test)) == ("brick", 4, 3 + 4 * 2)
    counts = {d: sum(s.defect == d for s in dataset.test) for d in ("good", "scratch", "stain", "missing", "discolor")}
    assert counts == {"good": 3, "scratch": 2, "stain": 2, "missing": 2, "discolor": 2}
    for sample in dataset.test:
        mask = dataset.read_mask(sample, 64, 64)
        if sample.label == 0:
            assert not mask.any()
        else:
            assert 0.005 <= mask.mean() <= 0.08
            assert np.array_equal(mask, np.asarray(Image.open(sample.mask_path)) == 255)
