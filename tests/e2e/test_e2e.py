"""The first complete path on the embedded default data: train → export → device runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit.data.datasets import open_dataset
from edgekit.metrics import image_auroc
from edgekit.runtime.decision import prediction_bound_factor

pytestmark = pytest.mark.e2e


def test_exported_bundle_reaches_image_auroc_095_on_default_brick(x86_bundle, brick):
    dataset = open_dataset(brick)
    detector = edgekit.load(x86_bundle)
    scores, _ = detector.raw([s.path for s in dataset.test])
    labels = np.array([s.label for s in dataset.test])
    assert labels.sum() == 40 and len(labels) == 60
    assert image_auroc(labels, scores) >= 0.95


def test_runtime_scores_equal_training_path_to_1e4_relative(x86_bundle, patchcore_run, brick):
    from edgekit.families.patchcore.train import score_run

    images = [s.path for s in open_dataset(brick).test[::6]]
    train_scores, train_maps = score_run(patchcore_run, images)
    device_scores, device_maps = edgekit.load(x86_bundle).raw(images)
    np.testing.assert_allclose(device_scores, train_scores, rtol=1e-4)
    np.testing.assert_allclose(device_maps, train_maps, rtol=1e-4, atol=1e-4 * float(np.abs(train_maps).max()))


def test_thresholds_are_fitted_on_held_out_normals_never_in_the_bank(x86_bundle, patchcore_run):
    config = patchcore_run.config
    assert not set(config["holdout_images"]) & set(config["bank_images"])
    assert len(config["holdout_images"]) == 12 and len(config["bank_images"]) == 48
    decision = edgekit.load(x86_bundle).manifest.decision
    assert decision.fitted_on == 12
    detector = edgekit.load(x86_bundle)
    held_scores, _ = detector.raw(config["holdout_images"])
    k = prediction_bound_factor(len(held_scores))  # 4.0 for 12 images
    assert decision.image_threshold == pytest.approx(held_scores.mean() + k * held_scores.std(ddof=1), rel=1e-9)
    assert decision.image_center < decision.image_threshold


def test_predictions_apply_the_manifest_decision(x86_bundle, brick):
    detector = edgekit.load(x86_bundle)
    normal = next(s.path for s in open_dataset(brick).test if s.label == 0)
    scratch = next(s.path for s in open_dataset(brick).test if s.defect == "stain")
    good, bad = detector.predict_batch([normal, scratch])
    assert not good.is_anomalous and good.score < 0.5
    assert bad.is_anomalous and bad.score > 0.5 and bad.raw_score > detector.manifest.decision.image_threshold
    assert bad.anomaly_map.shape == (256, 256) and bad.anomaly_map.dtype == np.float32
    single = detector.predict(scratch)
    assert single.raw_score == pytest.approx(bad.raw_score, rel=1e-5)


def test_loading_and_predicting_leaves_torch_out_of_sys_modules(x86_bundle, brick):
    image = next((brick / "test" / "good").iterdir())
    code = (
        "import sys, edgekit; d = edgekit.load(sys.argv[1]); p = d.predict(sys.argv[2]); "
        "print(p.raw_score, 'torch' in sys.modules, 'timm' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(x86_bundle), str(image)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert float(out[0]) > 0
    assert out[1:] == ["False", "False"]


def test_single_file_bundle_gives_the_same_scores(x86_bundle, brick, tmp_path):
    from edgekit.bundle import pack_bundle

    archive = pack_bundle(x86_bundle, tmp_path / "model.edgekit")
    image = next((brick / "test" / "scratch").iterdir())
    assert edgekit.load(archive).predict(image).raw_score == edgekit.load(x86_bundle).predict(image).raw_score


def test_onnxruntime_backend_reproduces_the_torch_network(patchcore_run, brick, tmp_path):
    import torch

    from edgekit.export.onnx import torch_to_onnx
    from edgekit.families.patchcore.train import load_network
    from edgekit.preprocess import InputSpec, prepare
    from edgekit.runtime.backends import BackendOptions, load_backend

    network = load_network(patchcore_run)
    onnx_path = torch_to_onnx(
        network, torch.zeros(1, 3, 256, 256), tmp_path / "n.onnx", input_name="image", output_names=("embedding",)
    )
    backend = load_backend("onnxruntime", onnx_path, BackendOptions())
    spec = InputSpec(height=256, width=256, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    batch = prepare(sorted((brick / "test" / "stain").iterdir())[:2], spec)
    with torch.inference_mode():
        expected = network(torch.from_numpy(batch)).numpy()
    got = backend.infer({"image": batch})["embedding"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_profile_reports_latency_cold_start_memory_accuracy_and_heat_maps(x86_bundle, brick, tmp_path):
    from edgekit.profile.report import profile_bundles

    result = profile_bundles([x86_bundle], target="x86", out=tmp_path, data=brick, runs=5, warmup=1, cold_starts=1)
    saved = json.loads((tmp_path / "profile.json").read_text())
    assert saved["schema"] == "edgekit-profile/2" and saved["host_is_target"] and not saved["estimate"]
    (variant,) = saved["variants"]
    assert variant["accuracy"]["image_auroc"] == result["variants"][0]["accuracy"]["image_auroc"] >= 0.95
    assert 0.9 < variant["accuracy"]["pixel_auroc"] <= 1.0
    assert 0 < variant["latency"]["p50_ms"] <= variant["latency"]["p90_ms"] <= variant["latency"]["p99_ms"]
    assert variant["cold_start"]["cold_start_s"] > 0 and variant["cold_start"]["peak_rss_mb"] > 10
    assert variant["cold_start"]["torch_imported"] is False
    assert variant["estimate"] is None and variant["pareto"] is True
    assert variant["bundle"]["size_bytes"] == sum(p.stat().st_size for p in Path(x86_bundle).rglob("*") if p.is_file())
    # heat maps: one normal image, then one per defect kind, each with the bundle's own verdict
    examples = variant["examples"]
    assert [e["label"] for e in examples] == ["good", "discolor", "missing"]
    assert [e["anomalous_truth"] for e in examples] == [False, True, True]
    detector = edgekit.load(x86_bundle)
    first = next(s for s in open_dataset(brick).test if s.label == 0)
    assert examples[0]["score"] == pytest.approx(detector.predict(first.path).score, abs=1e-4)
    assert (tmp_path / "report.html").read_text().count(examples[1]["overlay_base64"]) == 1
    markdown = (tmp_path / "profile.md").read_text()
    assert "image AUROC" in markdown and "perf_counter" in markdown
