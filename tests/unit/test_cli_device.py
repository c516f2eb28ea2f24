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


def test_sigterm_raised_inside_class_creation_still_exits_143():
    """Python 3.11 wraps an exception raised in ``__set_name__`` (SIGTERM landing mid-import) in a
    RuntimeError; the command still ends as terminated, not with a traceback."""
    import click
    from click.testing import CliRunner

    from edgekit.cli import _sigterm_cleans_up
    from edgekit.staging import Terminated

    class Descriptor:
        def __set_name__(self, owner, name):
            raise Terminated(143)

    @click.command()
    @_sigterm_cleans_up
    def command() -> None:
        class Late:  # noqa: F841 - creating it is the point
            field = Descriptor()

    result = CliRunner().invoke(command, [])
    assert result.exit_code == 143 and "error: terminated" in result.stderr
