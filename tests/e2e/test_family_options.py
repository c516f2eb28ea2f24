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
