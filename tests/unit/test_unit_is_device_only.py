"""tests/unit runs alone (no fixture from tests/e2e) and imports nothing of the training install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent


@pytest.mark.skipif(bool(os.environ.get("EDGEKIT_UNIT_ONLY")), reason="the run this test starts")
def test_unit_tests_pass_alone_without_torch_training_or_export_imported(tmp_path):
    report = tmp_path / "host-only.json"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(UNIT), "-q", "-p", "no:cacheprovider"],
        cwd=UNIT.parents[1],
        env={**os.environ, "EDGEKIT_UNIT_ONLY": str(report)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert report.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(report.read_text()) == []  # e.g. ["torch", ...]: a unit test pulled in the training install
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
