"""Dataset readers: MVTec, VisA and folder layouts, auto-detection, masks, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.data import Sample, open_dataset, read_folder, read_mvtec, read_visa
from edgekit.data.datasets import read_classes, read_list
from edgekit.errors import EdgekitError


def _png(path: Path, pixels: np.ndarray | int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(pixels, int):
        pixels = np.full((8, 8), pixels, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _left_half_mask(value: int = 255) -> np.ndarray:
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :4] = value
    return mask


@pytest.fixture
def mvtec(tmp_path) -> Path:
    category = tmp_path / "bottle"
    for name in ("001.png", "000.png"):
        _png(category / "train" / "good" / name)
    _png(category / "test" / "good" / "000.png")
    for stem in ("000", "001"):
        _png(category / "test" / "crack" / f"{stem}.png", 30)
        _png(category / "ground_truth" / "crack" / f"{stem}_mask.png", _left_half_mask())
    _png(category / "test" / "hole" / "000.png", 40)
    _png(category / "ground_truth" / "hole" / "000_mask.png", _left_half_mask())
    return category


VISA_HEADER = "object,split,label,image,mask\n"


@pytest.fixture
def visa(tmp_path) -> Path:
    root = tmp_path / "VisA"
    rows = []
    for category in ("candle", "pcb1"):
        images = root / category / "Data" / "Images"
        for stem in ("0002", "0001", "0003"):
            _png(images / "Normal" / f"{stem}.JPG")
            split = "test" if stem == "0003" else "train"
            rows.append(f"{category},{split},normal,{category}/Data/Images/Normal/{stem}.JPG,")
        _png(images / "Anomaly" / "000.JPG", 20)
        _png(root / category / "Data" / "Masks" / "Anomaly" / "000.png", _left_half_mask(1))
        rows.append(
            f"{category},test,anomaly,{category}/Data/Images/Anomaly/000.JPG,{category}/Data/Masks/Anomaly/000.png"
        )
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text(VISA_HEADER + "\n".join(rows) + "\n")
    return root


def test_read_mvtec_lists_sorted_samples_with_labels_and_masks(mvtec):
    dataset = read_mvtec(mvtec)
    assert (dataset.name, dataset.layout, dataset.root) == ("bottle", "mvtec", mvtec)
    assert [s.path.name for s in dataset.train] == ["000.png", "001.png"]
    assert {(s.label, s.defect, s.mask_path) for s in dataset.train} == {(0, "good", None)}
    assert [(s.defect, s.path.name, s.label) for s in dataset.test] == [
        ("crack", "000.png", 1),
        ("crack", "001.png", 1),
        ("good", "000.png", 0),
        ("hole", "000.png", 1),
    ]
    assert dataset.test[1].mask_path == mvtec / "ground_truth" / "crack" / "001_mask.png"
    assert dataset.test[2].mask_path is None


def test_read_mvtec_accepts_any_case_extension_and_skips_other_files(mvtec):
    _png(mvtec / "train" / "good" / "002.JPG")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mvtec / "train" / "good" / "003.Tiff", format="TIFF")
    (mvtec / "train" / "good" / "notes.txt").write_text("x")
    _png(mvtec / "train" / "good" / ".hidden.png")
    assert [s.path.name for s in read_mvtec(mvtec).train] == ["000.png", "001.png", "002.JPG", "003.Tiff"]


def test_read_mask_resizes_nearest_and_is_all_false_for_normals(mvtec):
    dataset = read_mvtec(mvtec)
    mask = dataset.read_mask(dataset.test[0], 4, 6)
    assert mask.dtype == bool and mask.shape == (4, 6)
    assert mask[:, :3].all() and not mask[:, 3:].any()
    assert not dataset.read_mask(dataset.test[2], 4, 6).any()


def test_read_mask_counts_label_values_as_anomalous_and_thresholds_0_255_masks_at_128(tmp_path):
    labels = _png(tmp_path / "labels.png", _left_half_mask(2))
    noisy = _left_half_mask(250)
    noisy[:, 4:] = 20
    noisy_path = _png(tmp_path / "noisy.png", noisy)
    dataset = read_folder(_png(tmp_path / "n" / "a.png").parent)
    for path in (labels, noisy_path):
        assert dataset.read_mask(Sample(tmp_path / "x.png", 1, "x", path), 8, 8).sum() == 32


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda c: [p.unlink() for p in (c / "train" / "good").iterdir()], "train/good: no training images"),
        (lambda c: (c / "test" / "scratch").mkdir(), "test/scratch: no test images"),
    ],
)
def test_read_mvtec_rejects_malformed_trees_naming_the_path(mvtec, breakage, message):
    breakage(mvtec)
    with pytest.raises(EdgekitError, match=message):
        read_mvtec(mvtec)


def test_missing_path_and_file_path_are_one_line_errors(tmp_path):
    with pytest.raises(EdgekitError, match="nowhere: no such folder"):
        open_dataset(tmp_path / "nowhere")
    with pytest.raises(EdgekitError, match="file.png: not a folder"):
        read_mvtec(_png(tmp_path / "file.png"))


def test_read_visa_follows_the_split_file(visa):
    dataset = read_visa(visa, category="pcb1")
    assert (dataset.name, dataset.layout) == ("pcb1", "visa")
    assert [s.path.name for s in dataset.train] == ["0001.JPG", "0002.JPG"]
    assert [(s.path.name, s.label, s.defect) for s in dataset.test] == [
        ("000.JPG", 1, "anomaly"),
        ("0003.JPG", 0, "good"),
    ]
    anomaly = dataset.test[0]
    assert anomaly.mask_path == visa / "pcb1" / "Data" / "Masks" / "Anomaly" / "000.png"
    assert dataset.read_mask(anomaly, 8, 8).sum() == 32


def test_open_dataset_detects_visa_and_asks_for_a_category(visa):
    assert open_dataset(visa, category="candle").name == "candle"
    with pytest.raises(EdgekitError, match=r"several categories \(candle, pcb1\); pass category="):
        open_dataset(visa)
    with pytest.raises(EdgekitError, match="no category 'fryum'"):
        read_visa(visa, category="fryum")


@pytest.mark.parametrize(
    "csv_text, message",
    [
        ("object,split,label,image\ncandle,train,normal,a.JPG\n", "header must be object,split,label,image,mask"),
        (
            VISA_HEADER + "candle,train,normal,candle/Data/Images/Normal/9999.JPG,\n",
            r"1cls.csv:2: image file not found",
        ),
        (VISA_HEADER + "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,\n", r"1cls.csv:2: empty mask path"),
        (
            VISA_HEADER + "candle,train,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\n",
            "anomalous image in the train split",
        ),
        (VISA_HEADER + "candle,val,normal,candle/Data/Images/Normal/0001.JPG,\n", "split must be train or test"),
        (VISA_HEADER + "candle,train,normal\n", "expected 5 fields, found 3"),
    ],
)
def test_read_visa_rejects_malformed_split_files(visa, csv_text, message):
    (visa / "split_csv" / "1cls.csv").write_text(csv_text)
    with pytest.raises(EdgekitError, match=message):
        read_visa(visa, category="candle")


def test_read_folder_moves_a_seeded_share_of_normals_to_test_and_matches_masks(tmp_path):
    for index in range(10):
        _png(tmp_path / "parts" / "good" / f"{index:02d}.png")
    for stem in ("a", "b", "c"):
        _png(tmp_path / "parts" / "bad" / f"{stem}.png", 10)
    _png(tmp_path / "masks" / "a.png", _left_half_mask())
    _png(tmp_path / "masks" / "b_mask.png", _left_half_mask())
    dataset = read_folder(tmp_path / "parts" / "good", tmp_path / "parts" / "bad", tmp_path / "masks", seed=0)
    assert (dataset.name, dataset.layout) == ("parts", "folder")
    assert len(dataset.train) == 8 and {s.label for s in dataset.train} == {0}
    test_normals = [s.path.name for s in dataset.test if s.label == 0]
    assert len(test_normals) == 2
    assert not set(test_normals) & {s.path.name for s in dataset.train}
    anomalies = [s for s in dataset.test if s.label == 1]
    assert [(s.path.name, s.defect) for s in anomalies] == [("a.png", "bad"), ("b.png", "bad"), ("c.png", "bad")]
    assert [s.mask_path.name if s.mask_path else None for s in anomalies] == ["a.png", "b_mask.png", None]
    again = read_folder(tmp_path / "parts" / "good", tmp_path / "parts" / "bad", seed=0)
    assert [s.path for s in again.train] == [s.path for s in dataset.train]
    picks = {
        tuple(
            s.path.name
            for s in read_folder(tmp_path / "parts" / "good", tmp_path / "parts" / "bad", seed=seed).test
            if s.label == 0
        )
        for seed in range(5)
    }
    assert len(picks) > 1


def test_read_folder_without_anomalies_trains_on_every_normal(tmp_path):
    for index in range(3):
        _png(tmp_path / "ok" / f"{index}.png")
    dataset = read_folder(tmp_path / "ok")
    assert len(dataset.train) == 3 and dataset.test == ()
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgekitError, match="empty: no images"):
        read_folder(tmp_path / "empty")


def test_open_dataset_on_an_mvtec_root_lists_categories_or_picks_one(mvtec, tmp_path):
    assert open_dataset(mvtec).name == "bottle"
    assert open_dataset(tmp_path).name == "bottle"
    _png(tmp_path / "cable" / "train" / "good" / "000.png")
    (tmp_path / "cable" / "test").mkdir()
    with pytest.raises(EdgekitError, match=r"several MVTec categories \(bottle, cable\); pass one of them"):
        open_dataset(tmp_path)
    assert open_dataset(tmp_path, category="bottle").name == "bottle"
    with pytest.raises(EdgekitError, match="no MVTec category 'wood' \\(found: bottle, cable\\)"):
        open_dataset(tmp_path, category="wood")


def test_open_dataset_rejects_a_folder_that_is_no_dataset(tmp_path):
    _png(tmp_path / "loose.png")
    with pytest.raises(EdgekitError, match="not a dataset"):
        open_dataset(tmp_path)


def test_mvtec_without_or_with_partial_ground_truth_is_image_labelled(mvtec):
    (mvtec / "ground_truth" / "hole" / "000_mask.png").unlink()
    partial = read_mvtec(mvtec)
    assert [s.mask_path is not None for s in partial.test if s.label] == [True, True, False]
    assert partial.masks_note == "masks for 2 of 3 anomalies"
    assert [partial.test[i].path.name for i in partial.pixel_indices] == ["000.png", "001.png", "000.png"]
    assert partial.pixel_indices == [0, 1, 2]  # crack/000, crack/001, good/000: the hole has no mask
    import shutil

    shutil.rmtree(mvtec / "ground_truth")
    none = read_mvtec(mvtec)
    assert none.masks_note == "no masks" and none.pixel_indices == []
    assert [s.label for s in none.test] == [1, 1, 0, 1]


@pytest.mark.parametrize("normal_name, defect_names", [("good", ["scratch", "stain"]), ("ok", ["nok"])])
def test_classification_layout_splits_normals_and_names_defects(tmp_path, normal_name, defect_names):
    root = tmp_path / "parts"
    for i in range(10):
        _png(root / normal_name / f"{i:02d}.png")
    for name in defect_names:
        _png(root / name / "a.png", 20)
    (root / "notes.txt").write_text("ignored")
    dataset = open_dataset(root, seed=3)
    assert dataset.layout == "classes" and len(dataset.train) == 8
    assert sorted({s.defect for s in dataset.test if s.label}) == sorted(
        "anomaly" if n == "nok" else n for n in defect_names
    )
    assert sum(1 for s in dataset.test if not s.label) == 2 and dataset.masks_note == "no masks"
    assert {s.path for s in dataset.train}.isdisjoint(s.path for s in dataset.test)
    assert open_dataset(root, seed=3) == dataset and open_dataset(root, seed=4) != dataset


def test_classification_layout_needs_one_normal_folder(tmp_path):
    _png(tmp_path / "good" / "a.png")
    _png(tmp_path / "ok" / "a.png")
    with pytest.raises(EdgekitError, match=r"exactly one folder of normal images .* \(found: good, ok\)"):
        read_classes(tmp_path)
    with pytest.raises(EdgekitError, match="needs at least 2 normal images"):
        _png(tmp_path / "bad" / "b.png")
        import shutil

        shutil.rmtree(tmp_path / "ok")
        read_classes(tmp_path)


def _listed_tree(root: Path) -> Path:
    for i in range(5):
        _png(root / "img" / f"n{i}.png")
    _png(root / "img" / "d0.png", 20)
    _png(root / "img" / "d1.png", 20)
    _png(root / "masks" / "d0.png", _left_half_mask())
    return root


def test_csv_and_json_lists_give_the_same_dataset(tmp_path):
    root = _listed_tree(tmp_path)
    rows = [("img/n%d.png" % i, "good", "") for i in range(5)] + [("img/d0.png", "scratch", "masks/d0.png")]
    rows.append(("img/d1.png", "1", ""))
    (root / "list.csv").write_text("path,label,mask\n" + "\n".join(",".join(r) for r in rows) + "\n")
    import json

    objects = [{"path": p, "label": label, **({"mask": m} if m else {})} for p, label, m in rows]
    (root / "list.json").write_text(json.dumps(objects))
    from_csv, from_json = open_dataset(root / "list.csv"), open_dataset(root / "list.json")
    assert from_csv.train == from_json.train and from_csv.test == from_json.test
    assert from_csv.layout == "list" and len(from_csv.train) == 4
    assert [(s.path.name, s.defect, s.mask_path is not None) for s in from_csv.test if s.label] == [
        ("d0.png", "scratch", True),
        ("d1.png", "anomaly", False),
    ]
    assert from_csv.masks_note == "masks for 1 of 2 anomalies"


def test_a_list_split_column_is_followed(tmp_path):
    root = _listed_tree(tmp_path)
    text = "label,path,split\n" + "".join(f"ok,img/n{i}.png,{'test' if i == 4 else 'train'}\n" for i in range(5))
    (root / "l.csv").write_text(text + "nok,img/d0.png,test\n")
    dataset = read_list(root / "l.csv")
    assert [s.path.name for s in dataset.train] == ["n0.png", "n1.png", "n2.png", "n3.png"]
    assert [s.path.name for s in dataset.test] == ["d0.png", "n4.png"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("file,label\nimg/n0.png,good\n", "header must name path and label"),
        ("path,label\nimg/none.png,good\n", r"l.csv:2: image file not found"),
        ("path,label\nimg/n0.png,\n", r"l.csv:2: empty label"),
        ("path,label,split\nimg/d0.png,bad,train\n", r"l.csv:2: anomalous image in the train split"),
        ("path,label,split\nimg/n0.png,good,val\n", r"l.csv:2: split must be train or test"),
        ("path,label\nimg/d0.png,scratch\n", "no normal images"),
        ("path,label\nimg/n0.png\n", r"l.csv:2: expected 2 fields, found 1"),
    ],
)
def test_bad_lists_are_one_line_errors(tmp_path, text, message):
    root = _listed_tree(tmp_path)
    (root / "l.csv").write_text(text)
    with pytest.raises(EdgekitError, match=message):
        read_list(root / "l.csv")


def test_bad_json_lists_are_one_line_errors(tmp_path):
    (tmp_path / "l.json").write_text('{"path": "a.png"}')
    with pytest.raises(EdgekitError, match="must be a JSON list of objects"):
        read_list(tmp_path / "l.json")
    (tmp_path / "l.json").write_text('[{"path": ["a.png"], "label": "good"}]')
    with pytest.raises(EdgekitError, match=r"l.json\[0\]: needs path and label as strings"):
        read_list(tmp_path / "l.json")
    (tmp_path / "l.json").write_text("[{")
    with pytest.raises(EdgekitError, match="not readable JSON"):
        read_list(tmp_path / "l.json")
