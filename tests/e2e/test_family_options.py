"""Each family's options dataclass is what its trainer takes: same names, same defaults, so
``edgekit train --help`` (built from the dataclasses) tells the truth."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from edgekit.families.registry import FAMILIES, options_of, trainer


@pytest.mark.parametrize("model", [m for m in FAMILIES if FAMILIES[m].options])
def test_the_options_dataclass_is_the_trainers_own_options_with_its_defaults(model):
    parameters = inspect.signature(trainer(model)).parameters
    for field in dataclasses.fields(options_of(model)):
        assert field.name in parameters, f"{model} does not take --{field.name}"
        default = parameters[field.name].default
        # None: "the model's default", which the trainer's DEFAULT_* constants take from the same dataclass
        assert default in (field.default, None), f"{model} --{field.name}: trainer {default}, options {field.default}"


def test_help_lists_every_option_with_each_familys_default():
    from click.testing import CliRunner

    from edgekit.cli import cli

    text = " ".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())
    for model in FAMILIES:
        options = options_of(model)
        for field in dataclasses.fields(options) if options else ():
            assert f"--{field.name.replace('_', '-')}" in text
            if field.default is not None:
                assert f"{model} {field.default}" in text


@pytest.mark.parametrize("model", [m for m in FAMILIES if FAMILIES[m].options and FAMILIES[m].export_parts])
def test_another_familys_option_is_one_error_line_naming_the_model(model, brick, tmp_path):
    from cli_helpers import assert_one_error_line
    from cli_helpers import run as run_cli

    own = {field.name for field in dataclasses.fields(options_of(model))}
    foreign = next(
        field.name
        for other in FAMILIES
        if options_of(other)
        for field in dataclasses.fields(options_of(other))
        if field.name not in own
    )
    flag = "--" + foreign.replace("_", "-")
    value = "1" if flag != "--variance" else "0.5"
    result = run_cli("train", "--model", model, flag, value, "--data", brick, "--out", tmp_path / "run")
    assert_one_error_line(result, flag, f"'{model}'")
    assert not (tmp_path / "run").exists()
