"""Image-level labels through every command that takes data: the embedded brick data laid out as a
factory labels it (no masks, a classification tree, a CSV or JSON list) gives the same numbers as the
MVTec tree it came from, and pixel metrics say "no masks" instead of pretending."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import run

DEFECTS = ("discolor", "missing", "scratch", "stain")


def _rows(brick: Path, *, masks: tuple[str, ...] = ()) -> list[dict]:
    """The brick tree as list rows, with its own split; masks only for the ``masks`` defects."""
    rows = [{"path": str(p), "label": "good", "split": "train"} for p in sorted((brick / "train" / "good").iterdir())]
    rows += [{"path": str(p), "label": "good", "split": "test"} for p in sorted((brick / "test" / "good").iterdir())]
    for defect in DEFECTS:
        for image in sorted((brick / "test" / defect).iterdir()):
            row = {"path": str(image), "label": defect, "split": "test"}
            if defect in masks:
                row["mask"] = str(brick / "ground_truth" / defect / f"{image.stem}_mask.png")
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def layouts(brick, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    no_masks = root / "no_masks" / "brick"
    shutil.copytree(brick, no_masks, ignore=shutil.ignore_patterns("ground_truth"))
    classes = root / "classes"
    for source, name in [(brick / "train" / "good", "ok"), (brick / "test" / "good", "ok")] + [
        (brick / "test" / d, d) for d in DEFECTS
    ]:
        shutil.copytree(source, classes / name, dirs_exist_ok=True)
    rows = _rows(brick, masks=("scratch",))
    listed = root / "list.csv"
    listed.write_text(
        "path,label,split,mask\n"
        + "".join(f"{r['path']},{r['label']},{r['split']},{r.get('mask', '')}\n" for r in rows)
    )
    (root / "list.json").write_text(json.dumps(_rows(brick)))
    return {"no_masks": no_masks, "classes": classes, "csv": listed, "json": root / "list.json"}


@pytest.mark.e2e
@pytest.mark.parametrize("layout, masks", [("no_masks", "no masks"), ("classes", "no masks"), ("csv", "10 of 40")])
def test_train_on_image_labels_reports_image_auroc_and_says_no_masks(layouts, tmp_path, layout, masks):
    result = run("train", "--model", "dfm", "--data", layouts[layout], "--out", tmp_path / "run", "--image-size", "128")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["image_auroc"] >= 0.9
    assert masks in metrics["masks"]
    assert ("pixel_auroc" in metrics) == (layout == "csv")


@pytest.mark.e2e
def test_check_gives_the_same_auroc_on_a_list_as_on_the_mvtec_tree(x86_bundle, exported, brick, layouts):
    int8 = exported("x86", "openvino", "int8")
    reference = run("check", "--reference", x86_bundle, "--candidate", int8, "--data", brick)
    for data in (layouts["json"], layouts["no_masks"]):
        listed = run("check", "--reference", x86_bundle, "--candidate", int8, "--data", data)
        assert listed.exit_code == reference.exit_code == 0, listed.output
        assert [line for line in listed.output.splitlines() if "AUROC" in line or "agree" in line] == [
            line for line in reference.output.splitlines() if "AUROC" in line or "agree" in line
        ]


@pytest.mark.e2e
def test_check_takes_the_folder_pair(x86_bundle, exported, brick):
    int8 = exported("x86", "openvino", "int8")
    pair = ["--normal-dir", brick / "test" / "good", "--abnormal-dir", brick / "test" / "scratch"]
    result = run("check", "--reference", x86_bundle, "--candidate", int8, *pair)
    assert result.exit_code == 0, result.output
    assert "image AUROC" in result.output and "PASS" in result.output.upper()
    refused = run("check", "--reference", x86_bundle, "--candidate", int8, "--abnormal-dir", brick / "test" / "scratch")
    assert refused.exit_code == 2 and "--abnormal-dir and --mask-dir go with --normal-dir" in refused.stderr


@pytest.mark.e2e
def test_profile_on_a_classification_tree_marks_pixel_metrics_no_masks(x86_bundle, layouts, tmp_path):
    result = run(
        "profile",
        x86_bundle,
        "--data",
        layouts["classes"],
        "--runs",
        "3",
        "--warmup",
        "1",
        "--cold-starts",
        "1",
        "--out",
        tmp_path / "p",
    )
    assert result.exit_code == 0, result.output
    accuracy = json.loads((tmp_path / "p" / "profile.json").read_text())["variants"][0]["accuracy"]
    assert accuracy["masks"] == "no masks" and "pixel_auroc" not in accuracy and "pro" not in accuracy
    assert accuracy["anomalous"] == 40 and accuracy["image_auroc"] >= 0.9
    assert "| pixel AUROC | no masks |" in (tmp_path / "p" / "profile.md").read_text()
    assert "<td>no masks</td>" in (tmp_path / "p" / "report.html").read_text()


@pytest.mark.e2e
def test_fit_takes_the_training_normals_of_a_list(x86_bundle, layouts, tmp_path):
    result = run("fit", x86_bundle, "--normals", layouts["csv"], "--out", tmp_path / "fitted")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "fitted" / "manifest.json").read_text())
    banked, held = manifest["head"]["params"]["bank"]["fitted"]["images"], manifest["decision"]["fitted_on"]
    assert (banked, held) == (48, 12)  # brick's 60 train/good, not its test normals or anomalies


@pytest.mark.e2e
def test_a_region_of_interest_and_letterbox_reach_the_bundle_and_score_as_in_training(brick, tmp_path):
    """Train on the lower-left 192x128 of each image, letterboxed; the x86 bundle cuts and pads the
    same way (manifest), so its AUROC on the test split is the training path's."""
    import edgekit
    from edgekit.data.datasets import open_dataset
    from edgekit.metrics import image_auroc

    result = run(
        "train", "--model", "dfm", "--data", brick, "--out", tmp_path / "run", "--image-size", "128",
        "--roi", "0,64,192,128", "--fit", "letterbox",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert run("export", tmp_path / "run", "--target", "x86", "--out", tmp_path / "b").exit_code == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["input"]["roi"] == [0, 64, 192, 128] and manifest["input"]["fit"] == "letterbox"
    test = open_dataset(brick).test
    scores, _ = edgekit.load(tmp_path / "b").raw([s.path for s in test])
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert image_auroc([s.label for s in test], scores) == pytest.approx(trained["image_auroc"], abs=1e-3)
    outside = run("train", "--model", "dfm", "--data", brick, "--out", tmp_path / "r2", "--roi", "200,0,100,100")
    assert (
        outside.exit_code == 1 and "region of interest 200,0,100,100 does not fit in a 256x256 image" in outside.stderr
    )
    assert not (tmp_path / "r2").exists()
