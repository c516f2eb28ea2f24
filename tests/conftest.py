"""Fixtures that tests/unit and tests/e2e share; the training and export fixtures are in tests/e2e/conftest.py."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def private_temp(tmp_path: Path, monkeypatch) -> Path:
    """Route edgekit's extraction temp dirs into a folder the test can inspect."""
    area = tmp_path / "temp-area"
    area.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(area))
    return area


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    """Correlated, offset, non-negative features (like pooled ReLU activations): 3000 × 24."""
    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((24, 24)) * np.linspace(3.0, 0.05, 24)[:, None]
    return np.abs(rng.standard_normal((3000, 24)) @ mixing + 2.0).astype(np.float32)
