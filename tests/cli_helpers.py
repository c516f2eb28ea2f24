"""Running edgekit commands in-process for tests, and the one-error-line rule for bad input."""

from __future__ import annotations

from click.testing import CliRunner

from edgekit.cli import cli


def run(*args):
    """`edgekit ARGS...` through click's CliRunner (paths and numbers are turned into text)."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_error_line(result, *fragments: str) -> None:
    """Exit 1 and exactly one `error: ...` line on stderr, containing every fragment."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
