"""Session fixtures of tests/e2e: build the embedded default data, train and export ONCE per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def brick(tmp_path_factory) -> Path:
    """The embedded default dataset exactly as the README's demo makes it (brick, seed 0, 256²)."""
    from edgekit.data.synth import synthesize

    (category,) = synthesize(tmp_path_factory.mktemp("data"), texture="brick", seed=0)
    return category


@pytest.fixture(scope="session")
def patchcore_run(brick, tmp_path_factory):
    from edgekit.families.patchcore.train import train_patchcore

    return train_patchcore(brick, tmp_path_factory.mktemp("runs") / "patchcore")


@pytest.fixture(scope="session")
def exported(patchcore_run, tmp_path_factory):
    """``exported(target, format=None, precision=None)``: the session's PatchCore run exported once per
    (target, format, precision), defaults resolved from the target, shared by every test file.
    Tests read these bundles; one that changes a bundle works on a copy."""
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run
    from edgekit.targets import get_target

    made: dict[tuple[str, str, str], Path] = {}

    def get(target: str, fmt: str | None = None, precision: str | None = None) -> Path:
        spec = get_target(target)
        fmt = fmt or spec.default_format
        precision = precision or spec.formats[fmt].default_precision
        key = (target, fmt, precision)
        if key not in made:
            out = tmp_path_factory.mktemp("bundles") / "-".join(key)
            export_run(patchcore_run.path, out, target=target, options=ExportOptions(format=fmt, precision=precision))
            made[key] = out
        return made[key]

    return get


@pytest.fixture(scope="session")
def x86_bundle(exported) -> Path:
    return exported("x86")
