"""Profiling with --background on a real exported bundle: the load is recorded and no worker is left running."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run
from test_profile_load import _gone

from edgekit.profile.load import describe_load


@pytest.mark.e2e
def test_profile_with_background_records_the_load_and_leaves_no_worker_running(x86_bundle, tmp_path):
    result = run(
        "profile", x86_bundle, "--runs", 5, "--warmup", 1, "--cold-starts", 1, "--background", 1, "--out", tmp_path
    )
    assert result.exit_code == 0, result.output
    (variant,) = json.loads((tmp_path / "profile.json").read_text())["variants"]
    latency = variant["latency"]
    assert "background: 1 busy process " in latency["method"]
    load = latency["load"]
    assert load["background"]["processes"] == 1 and all(_gone(pid) for pid in load["background"]["pids"])
    assert load["loadavg_before"] and isinstance(load["busy_processes"], list) and load["window_s"] > 0
    assert variant["cold_start"]["load"]["busy_processes"] is not None
    assert "background" not in variant["cold_start"]["load"]  # the workers ran during the latency runs only
    markdown = (tmp_path / "profile.md").read_text()
    assert f"- load during latency: {describe_load(load)}" in markdown
    assert "- load during cold start: load " in markdown
    assert "Load during latency:" in (tmp_path / "report.html").read_text()
