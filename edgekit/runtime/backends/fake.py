"""A fake backend for tests: a tiny deterministic "network" described by a JSON file.

The file holds ``{"pool": S, "outputs": ["name"]}``: the output is the input average-pooled over
S×S blocks, a feature map whose values follow the image, so heads, thresholds and detectors can
be tested without any runtime installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends import BackendOptions


class FakeBackend:
    name = "fake"
    version = "1"

    def __init__(self, path: Path, options: BackendOptions) -> None:
        try:
            spec = json.loads(Path(path).read_text())
            self._pool = int(spec["pool"])
            self._outputs = list(spec["outputs"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EdgekitError(f"fake network {path}: unreadable ({exc})") from None
        self.calls = 0

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        (image,) = inputs.values()
        n, c, h, w = image.shape
        s = self._pool
        pooled = image[:, :, : h // s * s, : w // s * s].reshape(n, c, h // s, s, w // s, s).mean(axis=(3, 5))
        self.calls += 1
        return {name: pooled.astype(np.float32) for name in self._outputs}


def load(path: Path, options: BackendOptions) -> FakeBackend:
    return FakeBackend(path, options)
