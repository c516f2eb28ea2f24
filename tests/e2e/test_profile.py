"""`edgekit profile --sweep`, `--estimate` and `edgekit report`: variants, Pareto front, labelled estimates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line as one_error_line
from cli_helpers import run

from edgekit.profile.html import pareto_front
from edgekit.targets import get_target

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def x86_sweep(patchcore_run, brick, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep-x86")
    result = run(
        "profile",
        patchcore_run.path,
        "--target",
        "x86",
        "--sweep",
        "--formats",
        "openvino",
        "--precisions",
        "fp32",
        "--banks",
        "full,default",
        "--runs",
        3,
        "--warmup",
        1,
        "--cold-starts",
        1,
        "--data",
        brick,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def rpi4_estimate(patchcore_run, brick, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("estimate-rpi4")
    result = run(
        "profile",
        patchcore_run.path,
        "--target",
        "rpi4",
        "--sweep",
        "--formats",
        "onnx",
        "--precisions",
        "fp32",
        "--banks",
        "default,small",
        "--estimate",
        "--data",
        brick,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    return out


def test_sweep_exports_and_measures_every_chosen_variant(x86_sweep, patchcore_run):
    profile = json.loads((x86_sweep / "profile.json").read_text())
    assert profile["target"] == "x86" and profile["host_is_target"] and not profile["estimate"]
    full, default = profile["variants"]
    assert full["bundle"]["bank"]["rows"] == patchcore_run.config["bank_rows"]
    assert full["bundle"]["bank"]["dtype"] == "float32" and default["bundle"]["bank"]["dtype"] == "int8"
    assert full["bundle"]["size_bytes"] > default["bundle"]["size_bytes"] + 2_000_000
    for variant in (full, default):
        assert Path(variant["bundle"]["path"]).parent == x86_sweep / "bundles"
        assert variant["latency"]["p50_ms"] > 0 and variant["cold_start"]["peak_rss_mb"] > 10
        assert variant["accuracy"]["image_auroc"] >= 0.95 and variant["estimate"] is None
    expected = pareto_front([(v["latency"]["p50_ms"], v["accuracy"]["image_auroc"]) for v in profile["variants"]])
    assert [v["pareto"] for v in profile["variants"]] == expected and any(expected)
    markdown = (x86_sweep / "profile.md").read_text()
    assert "4915x152 float32" in markdown and "975x152 int8" in markdown and "estimate" not in markdown
    assert full["name"] in (x86_sweep / "report.html").read_text()


def test_estimate_off_the_device_is_labelled_and_never_timed(rpi4_estimate):
    profile = json.loads((rpi4_estimate / "profile.json").read_text())
    assert profile["estimate"] and not profile["host_is_target"] and "not rpi4's" in profile["host_note"]
    default, small = profile["variants"]
    for variant in (default, small):
        assert variant["latency"] is None and variant["cold_start"] is None
        estimate = variant["estimate"]
        assert estimate["latency_ms"] == pytest.approx(estimate["network_ms"] + estimate["head_ms"])
        assert estimate["method"].startswith("estimate, not measured")
        assert "scored on this x86_64 host" in variant["accuracy"]["method"]
    # a 4x smaller bank cuts the head's estimated time (its FLOPs are linear in the rows)
    assert small["bundle"]["bank"]["rows"] * 3.9 < default["bundle"]["bank"]["rows"]
    assert small["estimate"]["head_ms"] < default["estimate"]["head_ms"] / 3.5
    assert small["estimate"]["network_ms"] == pytest.approx(default["estimate"]["network_ms"], rel=0.01)
    markdown = (rpi4_estimate / "profile.md").read_text()
    assert "(estimate)" in markdown and "Latencies below are estimates" in markdown


def test_profile_of_another_device_without_estimate_stops_before_exporting(patchcore_run, tmp_path):
    one_error_line(
        run("profile", patchcore_run.path, "--target", "rpi5", "--sweep", "--out", tmp_path),
        "this machine is x86_64, not rpi5's aarch64",
        "--estimate",
    )
    assert list(tmp_path.iterdir()) == []


def test_a_run_without_sweep_and_sweep_filters_without_sweep_are_refused(patchcore_run, x86_bundle, tmp_path):
    one_error_line(run("profile", patchcore_run.path, "--target", "x86", "--out", tmp_path), "--sweep")
    one_error_line(run("profile", x86_bundle, "--precisions", "int8", "--out", tmp_path), "add --sweep")
    one_error_line(
        run("profile", patchcore_run.path, "--sweep", "--banks", "tiny", "--out", tmp_path),
        "unknown bank setting 'tiny'",
    )
    one_error_line(run("profile", x86_bundle, "--estimate", "--out", tmp_path), "drop --estimate")
    assert not (tmp_path / "profile.json").exists()


def test_roofline_uses_the_counted_flops_and_the_published_peak(x86_bundle):
    import torch

    import edgekit
    from edgekit.profile.estimate import roofline_estimate

    detector = edgekit.load(x86_bundle)
    export = detector.manifest.export
    # the FLOP count equals 2 x multiply-adds of every convolution, counted here with hooks instead
    from edgekit.export.job import ExportOptions
    from edgekit.families.patchcore.export import patchcore_parts
    from edgekit.train.run import open_run

    network = patchcore_parts(open_run(detector.manifest.source["run"]), ExportOptions()).network
    macs = []

    def count(module, inputs, output):
        kh, kw = module.kernel_size
        macs.append(output.numel() * (module.in_channels // module.groups) * kh * kw)

    hooks = [m.register_forward_hook(count) for m in network.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        output = network(torch.zeros(1, 3, 256, 256))
    for hook in hooks:
        hook.remove()
    assert export["network_flops"] == pytest.approx(2 * sum(macs), rel=0.02)
    assert export["output_shape"] == list(output.shape)
    rpi4 = get_target("rpi4")
    estimate = roofline_estimate(detector, rpi4)
    head_flops, _ = detector.head.cost(*export["output_shape"][2:])
    assert estimate["network_ms"] >= export["network_flops"] / (rpi4.peak["fp32_gflops"] * 1e9) * 1e3 * 0.999
    assert estimate["head_ms"] >= head_flops / (rpi4.peak["fp32_gflops"] * 1e9) * 1e3 * 0.999
    assert estimate["flops"] == export["network_flops"] + head_flops


def test_report_merges_device_profiles_into_one_page(x86_sweep, rpi4_estimate, tmp_path):
    out = tmp_path / "merged" / "report.html"
    result = run("report", x86_sweep / "profile.json", rpi4_estimate / "profile.json", "--out", out)
    assert result.exit_code == 0, result.output
    assert "2 profiles, 4 variants" in result.output
    page = out.read_text()
    for profile_dir in (x86_sweep, rpi4_estimate):
        for variant in json.loads((profile_dir / "profile.json").read_text())["variants"]:
            assert variant["name"] in page and variant["examples"][0]["overlay_base64"] in page
    assert "http://" not in page and "https://" not in page


def test_report_refuses_what_is_not_a_profile(x86_sweep, tmp_path):
    (tmp_path / "other.json").write_text('{"schema": "something-else"}')
    out = tmp_path / "report.html"
    one_error_line(
        run("report", x86_sweep / "profile.json", tmp_path / "other.json", "--out", out),
        "other.json is not an edgekit profile",
    )
    one_error_line(run("report", tmp_path / "missing.json", "--out", out), "missing.json: no such file")
    assert not out.exists()


def test_the_html_reports_open_in_headless_chromium_without_errors_or_fetches(x86_sweep, rpi4_estimate, tmp_path):
    from browser import is_blank, render_page

    merged = tmp_path / "merged.html"
    assert run("report", x86_sweep / "profile.json", rpi4_estimate / "profile.json", "--out", merged).exit_code == 0
    for page in (x86_sweep / "report.html", merged):
        result = render_page(page, width=1280, height=1600)
        assert result.console_errors == [], result.console_errors
        assert result.external_requests == []
        assert not is_blank(result.screenshot_png)
