"""CLI commands that need no model: a path that is not a bundle, the target list."""
from __future__ import annotations

from cli_helpers import assert_one_error_line, run


def test_a_path_that_is_not_a_bundle_is_refused(tmp_path):
    (tmp_path / "img.png").write_bytes(b"")
    assert_one_error_line(run("predict", tmp_path, tmp_path / "img.png"))


def test_targets_lists_x86():
    result = run("targets")
    assert result.exit_code == 0
    assert any(line.split()[:4] == ["x86", "openvino", "openvino", "CPU"] for line in result.stdout.splitlines())
