"""Runtime backends: one file per runtime, all with the same two-call protocol.

A backend is ``load(path, options) -> Backend`` and ``Backend.infer(inputs) -> outputs``, where
inputs and outputs are dicts of numpy arrays keyed by tensor name. ``infer`` must be safe to call
from several threads at once (a Detector is shared by a camera loop and HTTP requests). The module
for a runtime is imported only when a bundle names it, so a device needs just the one runtime it uses.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np

from edgekit.errors import EdgekitError

#: runtime name -> (module, pip extra that installs it)
BACKENDS: dict[str, tuple[str, str]] = {
    "openvino": ("edgekit.runtime.backends.openvino", "edgekit-anomaly[openvino]"),
    "onnxruntime": ("edgekit.runtime.backends.onnxruntime", "edgekit-anomaly[onnx]"),
    "litert": ("edgekit.runtime.backends.litert", "edgekit-anomaly[litert]"),
    "fake": ("edgekit.runtime.backends.fake", "edgekit-anomaly"),
}


@dataclass(frozen=True)
class BackendOptions:
    """How to run a network: which device, how many threads, in which precision."""

    device: str = "CPU"
    threads: int = 0  # per network call; 0: the runtime's own default
    lanes: int = 1  # network calls meant to run at once (throughput mode), each with ``threads``
    precision: str = "fp32"
    output_names: tuple[str, ...] = ()
    max_parallel: int = 0  # network calls at once from threads sharing a backend (0: the backend's default)
    extra: Mapping[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str
    version: str

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def load_backend(runtime: str, path: Path, options: BackendOptions) -> Backend:
    """Import the named runtime's module and load the network file at ``path`` with it."""
    if runtime not in BACKENDS:
        raise EdgekitError(f"unknown runtime {runtime!r}; this edgekit knows {sorted(BACKENDS)}")
    module_name, extra = BACKENDS[runtime]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EdgekitError(
            f"runtime {runtime!r} is not installed here ({exc}); install it with: pip install '{extra}'"
        ) from None
    return module.load(Path(path), options)
