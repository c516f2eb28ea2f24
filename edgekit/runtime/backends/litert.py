"""LiteRT backend: runs a ``.tflite`` file with ``ai_edge_litert`` (or ``tflite_runtime`` on devices
that have that instead). numpy and the interpreter only.

Tensor names come from the file's signature (edgekit's export writes one, ``serving_default``,
keyed by the manifest's names). A network with one input or one output also answers to any
name, so a file converted elsewhere still loads. The file's batch is fixed (1 from edgekit's
export): a call with another batch resizes the input tensor and re-plans once; if the graph
cannot be resized, images are run one batch-sized slice at a time. Quantized inputs and outputs
(int8/uint8) are quantized and dequantized here with the file's scale and zero point, so callers
always pass and receive float32.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgekit.errors import EdgekitError, reason
from edgekit.runtime.backends import BackendOptions

try:
    from ai_edge_litert.interpreter import Interpreter as _Interpreter

    _RUNTIME = "ai-edge-litert"
    from ai_edge_litert import __version__ as _VERSION
except ImportError:  # pragma: no cover - exercised on devices with the older standalone runtime
    try:
        from tflite_runtime.interpreter import Interpreter as _Interpreter

        _RUNTIME = "tflite-runtime"
        from tflite_runtime import __version__ as _VERSION
    except ImportError as _exc:
        raise ImportError(f"neither ai-edge-litert nor tflite-runtime is installed: {_exc}") from None

_QUANTIZED = (np.int8, np.uint8, np.int16)


class LiteRtBackend:
    """A pool of interpreters of one file: an interpreter holds one set of tensors, so each serves
    one call at a time. One is made at load; more are made for concurrent callers, up to
    ``max_parallel`` (default: the budget's lanes, so latency mode runs one call at a time)."""

    name = "litert"
    version = f"{_RUNTIME} {_VERSION}"

    def __init__(self, path: Path, options: BackendOptions) -> None:
        if options.device.upper() not in ("CPU", "AUTO"):
            raise EdgekitError(f"the LiteRT backend runs on CPU, not {options.device!r}")
        self._path, self._options = path, options
        self.max_parallel = options.max_parallel or options.lanes
        self._slots = threading.BoundedSemaphore(self.max_parallel)
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._idle.put(_Runner(path, options))  # the first one checks the file

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._slots:
            try:
                runner = self._idle.get_nowait()
            except queue.Empty:
                runner = _Runner(self._path, self._options)
            try:
                return runner.infer(inputs)
            finally:
                self._idle.put(runner)


class _Runner:
    """One interpreter and its tensor bookkeeping; not for concurrent calls."""

    def __init__(self, path: Path, options: BackendOptions) -> None:
        try:
            self._interpreter = _Interpreter(
                model_path=str(path), num_threads=int(options.threads) if options.threads else None
            )
            signatures = self._interpreter.get_signature_list()
        except (ValueError, RuntimeError) as exc:
            raise EdgekitError(f"LiteRT could not load {path.name}: {reason(exc)}") from None
        if not signatures:
            raise EdgekitError(f"{path.name} has no signature; re-export it with edgekit")
        key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
        runner = self._interpreter.get_signature_runner(key)
        self._inputs: dict[str, dict[str, Any]] = runner.get_input_details()
        self._outputs: dict[str, dict[str, Any]] = runner.get_output_details()
        del runner  # it holds a reference that makes the interpreter refuse to re-allocate
        wanted = tuple(options.output_names) or tuple(self._outputs)
        self._output_map = {
            name: self._outputs[_match(name, self._outputs, "output", path)]["index"] for name in wanted
        }
        self._output_details = {d["index"]: d for d in self._outputs.values()}
        self._interpreter.allocate_tensors()
        self._shapes = {d["index"]: tuple(int(n) for n in d["shape"]) for d in self._inputs.values()}

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._infer(inputs)

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(inputs) != len(self._inputs):
            raise EdgekitError(
                f"the network takes {len(self._inputs)} input(s) ({', '.join(self._inputs)}), got {len(inputs)}"
            )
        feeds = [
            (self._inputs[_match(name, self._inputs, "input", None)], np.asarray(value))
            for name, value in inputs.items()
        ]
        batch = feeds[0][1].shape[0]
        if self._fit_batch(feeds):
            return self._run(feeds)
        step = int(feeds[0][0]["shape"][0]) or 1  # the graph's own batch; run slices of it
        parts = [self._run([(d, v[start : start + step]) for d, v in feeds]) for start in range(0, batch, step)]
        return {name: np.concatenate([p[name] for p in parts]) for name in self._output_map}

    def _fit_batch(self, feeds: list[tuple[dict[str, Any], np.ndarray]]) -> bool:
        """Make the input tensors take these shapes; False if the graph cannot be resized."""
        if all(self._shapes[d["index"]] == value.shape for d, value in feeds):
            return True
        for details, value in feeds:
            expected = tuple(details["shape"][1:])
            if tuple(value.shape[1:]) != expected:
                raise EdgekitError(
                    f"input {details['name']} must be (N, {', '.join(map(str, expected))}), not {value.shape}"
                )
        batch = int(feeds[0][1].shape[0])
        try:
            for details, value in feeds:
                self._interpreter.resize_tensor_input(details["index"], list(value.shape))
            self._interpreter.allocate_tensors()
            # a graph with a batch-1 RESHAPE inside resizes "successfully" and returns one
            # result for N images (litert-torch writes some reductions that way): not resizable
            if any(self._interpreter.get_tensor(index).shape[:1] != (batch,) for index in self._output_map.values()):
                raise ValueError("the outputs do not follow the input's batch size")
        except (ValueError, RuntimeError):
            for details, _ in feeds:  # back to the file's own shape
                self._interpreter.resize_tensor_input(details["index"], list(details["shape"]))
            self._interpreter.allocate_tensors()
            self._shapes.update({d["index"]: tuple(int(n) for n in d["shape"]) for d, _ in feeds})
            return False
        self._shapes.update({d["index"]: tuple(value.shape) for d, value in feeds})
        return True

    def _run(self, feeds: list[tuple[dict[str, Any], np.ndarray]]) -> dict[str, np.ndarray]:
        if not self._fit_batch(feeds):
            raise EdgekitError("LiteRT: the network cannot take this batch size")
        for details, value in feeds:
            self._interpreter.set_tensor(details["index"], _to_tensor(value, details))
        self._interpreter.invoke()
        return {
            name: _from_tensor(self._interpreter.get_tensor(index), self._output_details[index])
            for name, index in self._output_map.items()
        }


def _match(name: str, tensors: Mapping[str, Any], kind: str, path: Path | None) -> str:
    """The signature key for manifest name ``name``: itself, or the only tensor there is."""
    if name in tensors:
        return name
    if len(tensors) == 1:
        return next(iter(tensors))
    where = f" of {path.name}" if path is not None else ""
    raise EdgekitError(f"the network{where} has no {kind} named {name!r} (it has {', '.join(sorted(tensors))})")


def _to_tensor(value: np.ndarray, details: Mapping[str, Any]) -> np.ndarray:
    dtype = np.dtype(details["dtype"])
    if dtype.type in _QUANTIZED:
        scale, zero_point = details["quantization"]
        info = np.iinfo(dtype)
        quantized = np.round(np.asarray(value, np.float32) / np.float32(scale)) + zero_point
        return np.clip(quantized, info.min, info.max).astype(dtype)
    return np.ascontiguousarray(value, dtype=dtype)


def _from_tensor(value: np.ndarray, details: Mapping[str, Any]) -> np.ndarray:
    if np.dtype(details["dtype"]).type in _QUANTIZED:
        scale, zero_point = details["quantization"]
        return (value.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
    return np.asarray(value, dtype=np.float32)  # get_tensor already returns a copy


def load(path: Path, options: BackendOptions) -> LiteRtBackend:
    return LiteRtBackend(path, options)
