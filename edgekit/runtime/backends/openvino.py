"""OpenVINO backend: runs an IR (``.xml`` + ``.bin``) on CPU, GPU or another OpenVINO device."""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import Mapping

import numpy as np

from edgekit.errors import EdgekitError, reason
from edgekit.runtime.backends import BackendOptions

try:
    import openvino as ov
except ImportError as _exc:  # pragma: no cover - exercised on devices without the runtime
    raise ImportError(f"openvino is not installed: {_exc}") from None

#: edgekit precision -> OpenVINO INFERENCE_PRECISION_HINT on CPU. All pinned to f32: on CPUs with
#: bf16 or AMX support OpenVINO otherwise computes in bf16 (an "f16" hint also yields bf16 there)
#: and scores drift from the host's by a few per cent. An fp16 bundle's fp16 is its weights; int8
#: layers run in int8 whatever the hint. Other devices keep their plugin's default (GPU: f16).
_PRECISION_HINTS = {"fp32": "f32", "int8": "f32", "fp16": "f32"}


class OpenVinoBackend:
    name = "openvino"
    version = ov.__version__

    def __init__(self, path: Path, options: BackendOptions) -> None:
        core = ov.Core()
        available = core.available_devices
        device_kind = options.device.split(".")[0].split(":")[0]
        if device_kind not in ("AUTO", "MULTI", "HETERO") and not any(d.startswith(device_kind) for d in available):
            raise EdgekitError(
                f"OpenVINO device {options.device!r} is not present on this machine "
                f"(available: {', '.join(available) or 'none'})"
            )
        # Latency: one stream on all threads. Throughput: one stream per lane, the same threads in all.
        config: dict[str, object] = {"PERFORMANCE_HINT": "THROUGHPUT" if options.lanes > 1 else "LATENCY"}
        if device_kind == "CPU":
            config["INFERENCE_PRECISION_HINT"] = _PRECISION_HINTS.get(options.precision, "f32")
            if options.threads:
                config["INFERENCE_NUM_THREADS"] = int(options.threads) * options.lanes
            if options.lanes > 1:
                config["NUM_STREAMS"] = options.lanes
        config.update(options.extra)
        try:
            model = core.read_model(str(path))
            self._compiled = core.compile_model(model, options.device, config)
        except RuntimeError as exc:
            raise EdgekitError(f"OpenVINO could not load {path.name} on {options.device}: {reason(exc)}") from None
        self._outputs = [(out.get_any_name(), out) for out in self._compiled.outputs]
        # An infer request serves one call at a time ("Infer Request is busy" otherwise, or another
        # thread's results): each call borrows an idle one, and a new one is made when none is idle,
        # up to max_parallel requests (each holds its own activation buffers); more callers wait.
        self.max_parallel = options.max_parallel or max(options.lanes, os.cpu_count() or 1)
        self._slots = threading.BoundedSemaphore(self.max_parallel)
        self._idle: queue.SimpleQueue = queue.SimpleQueue()

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._slots:
            try:
                request = self._idle.get_nowait()
            except queue.Empty:
                request = self._compiled.create_infer_request()
            try:
                results = request.infer(dict(inputs))
                return {name: np.array(results[port]) for name, port in self._outputs}
            finally:
                self._idle.put(request)


def load(path: Path, options: BackendOptions) -> OpenVinoBackend:
    return OpenVinoBackend(path, options)
