"""Every option value is checked by its click type: one `error:` line and exit 2, never a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from edgekit.cli import cli


def _invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# {dir}: an existing folder, {file}: an existing file, {new}: a path that does not exist
BAD_VALUES = [
    (["data", "synth", "--out", "{new}", "--seed", "-1"], "--seed"),
    (["data", "synth", "--out", "{new}", "--size", "100000"], "--size"),
    (["data", "synth", "--out", "{file}"], "--out"),
    (["train", "--data", "{dir}", "--out", "{new}", "--seed", "-1"], "--seed"),
    (["train", "--data", "{dir}", "--out", "{new}", "--batch-size", "0"], "--batch-size"),
    (["train", "--data", "{dir}", "--out", "{new}", "--image-size", "100000"], "--image-size"),
    (["train", "--data", "{dir}", "--out", "{new}", "--epochs", "0"], "--epochs"),
    (["train", "--data", "{dir}", "--out", "{new}", "--holdout", "1.5"], "--holdout"),
    (["train", "--data", "{dir}", "--out", "{new}", "--coreset-ratio", "0"], "--coreset-ratio"),
    (["train", "--data", "{dir}", "--out", "{new}", "--num-neighbors", "-2"], "--num-neighbors"),
    (["train", "--data", "{dir}", "--out", "{new}", "--coreset-rows", "0"], "--coreset-rows"),
    (["train", "--data", "{dir}", "--out", "{new}", "--variance", "1"], "--variance"),
    (["train", "--data", "{dir}", "--out", "{new}", "--dims", "0"], "--dims"),
    (["train", "--data", "{dir}", "--out", "{new}", "--learning-rate", "-1"], "--learning-rate"),
    (["train", "--data", "{new}", "--out", "{dir}/run"], "--data"),
    (["train", "--data", "{file}", "--out", "{dir}/run"], "--data"),
    (["train", "--data", "{dir}", "--out", "{new}", "--weights", "{new}"], "--weights"),
    (["train", "--data", "{dir}", "--out", "{file}"], "--out"),
    (["export", "{dir}", "--out", "{new}", "--calibration-images", "-3"], "--calibration-images"),
    (["export", "{dir}", "--out", "{new}", "--bank-size", "0"], "--bank-size"),
    (["export", "{dir}", "--out", "{new}", "--max-drop", "2"], "--max-drop"),
    (["export", "{new}", "--out", "{dir}/b"], "RUN_DIR"),
    (["fit", "{dir}", "--normals", "{dir}", "--seed", "-1"], "--seed"),
    (["fit", "{dir}", "--normals", "{dir}", "--holdout", "0"], "--holdout"),
    (["fit", "{new}", "--normals", "{dir}"], "BUNDLE"),
    (["profile", "{dir}", "--cold-starts", "0"], "--cold-starts"),
    (["profile", "{dir}", "--threads", "-1"], "--threads"),
    (["profile", "{dir}", "--mode", "fast"], "--mode"),
    (["predict", "{dir}", "{file}", "--threads", "257"], "--threads"),
    (["run", "{dir}", "--source", "{dir}", "--mode", "fast"], "--mode"),
    (["run", "{dir}", "--source", "{dir}", "--threads", "-1"], "--threads"),
    (["profile", "{dir}", "--runs", "0"], "--runs"),
    (["profile", "{dir}", "--warmup", "-1"], "--warmup"),
    (["profile", "{dir}", "--background", "-1"], "--background"),
    (["profile", "{dir}", "--background", "65"], "--background"),
    (["profile", "{dir}", "--out", "{file}"], "--out"),
    (["profile", "{dir}", "--data", "{new}"], "--data"),
    (["predict", "{dir}", "x.png", "--overlay", "{file}"], "--overlay"),
    (["predict", "{new}", "x.png"], "BUNDLE"),
    (["run", "{new}", "--source", "x.mp4"], "BUNDLE"),
    (["run", "{dir}", "--save-anomalies", "{file}"], "--save-anomalies"),
    (["run", "{dir}", "--save-frames", "{file}"], "--save-frames"),
    (["report", "{dir}"], "PROFILES"),
    (["report", "{file}", "--out", "{dir}"], "--out"),
    (["check", "--reference", "{dir}", "--candidate", "{dir}", "--data", "{file}"], "--data"),
    (["demo", "--workdir", "{file}"], "--workdir"),
    (["predict", "{dir}", "x.png", "--require-signature", "{new}"], "--require-signature"),
    (["run", "{dir}", "--require-signature", "{dir}"], "--require-signature"),
    (["keygen", "--out", "{dir}"], "--out"),
    (["sign", "{new}", "--key", "{file}"], "BUNDLE"),
    (["sign", "{dir}", "--key", "{new}"], "--key"),
    (["verify", "{dir}", "--pubkey", "{new}"], "--pubkey"),
]


@pytest.mark.parametrize(
    "args, option", BAD_VALUES, ids=[" ".join(a[:1] + [o]) + f"-{i}" for i, (a, o) in enumerate(BAD_VALUES)]
)
def test_bad_option_value_is_one_error_line_exit_2_and_writes_nothing(tmp_path, args, option):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    names = {"{dir}": str(tmp_path / "dir"), "{file}": str(tmp_path / "file"), "{new}": str(tmp_path / "new")}
    for key, value in names.items():
        args = [a.replace(key, value) for a in args]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = _invoke(args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_unknown_options_keep_clicks_usage_text_with_a_suggestion():
    result = _invoke(["train", "--batch-sise", "4"])
    assert result.exit_code == 2 and "Did you mean '--batch-size'?" in result.stderr
