"""onnxruntime backend: runs an ``.onnx`` file with the CPU execution provider."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from edgekit.errors import EdgekitError, reason
from edgekit.runtime.backends import BackendOptions

try:
    import onnxruntime as ort
except ImportError as _exc:  # pragma: no cover - exercised on devices without the runtime
    raise ImportError(f"onnxruntime is not installed: {_exc}") from None


class OnnxRuntimeBackend:
    name = "onnxruntime"
    version = ort.__version__

    def __init__(self, path: Path, options: BackendOptions) -> None:
        session_options = ort.SessionOptions()
        if options.threads:
            session_options.intra_op_num_threads = int(options.threads)
        # Idle pool threads sleep instead of spinning: spinning ones take the cores the numpy head
        # needs right after the network (see edgekit.runtime.threads). Concurrent run() calls
        # (throughput lanes) share the session; with one thread each runs on its caller's thread.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session_options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EdgekitError(f"onnxruntime could not load {path.name}: {reason(exc)}") from None
        self._output_names = [out.name for out in self._session.get_outputs()]

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._output_names, dict(inputs))
        return dict(zip(self._output_names, values))


def load(path: Path, options: BackendOptions) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(path, options)
