"""Shared fixtures. The e2e ones build the embedded default data, train and export ONCE per session."""
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
    from edgekit.train.patchcore import train_patchcore

    return train_patchcore(brick, tmp_path_factory.mktemp("runs") / "patchcore")


@pytest.fixture(scope="session")
def x86_bundle(patchcore_run, tmp_path_factory) -> Path:
    from edgekit.export.pipeline import export_run

    out = tmp_path_factory.mktemp("bundles") / "x86"
    export_run(patchcore_run.path, out, target="x86")
    return out
