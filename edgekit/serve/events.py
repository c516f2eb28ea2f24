"""What the pipeline hands to sinks: one frame, its prediction, and the event that describes both.

A sink is anything with ``handle(item)`` and ``close()``. Each sink runs behind a
:class:`SinkWorker`: its own thread and a bounded queue, so a slow disk, network or broker never
stalls inference; when the queue is full the newest item is dropped and counted instead. Memory
stays bounded by what is queued: a sink gets the frame's pixels and map only if it says it reads
them (``pixels = True``), and then a short queue, and ``wants(event)`` lets it refuse an item
before it is queued at all (a 1080p frame is 6 MB: 64 of them per lagging sink would sink a Pi).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Optional, Protocol

import numpy as np

from edgekit.runtime.detector import Prediction


@dataclass(frozen=True)
class Frame:
    """One image from a source, always RGB (or grey) uint8, HxWxC."""

    index: int  # counted by the source from 0, including frames later dropped
    image: np.ndarray
    source: str  # what the user gave as --source
    name: Optional[str] = None  # file name, for folder and glob sources
    captured: float = 0.0  # time.time() at capture
    captured_mono: float = 0.0  # time.perf_counter() at capture, for frame-to-event latency


@dataclass(frozen=True)
class Event:
    """One scored frame, as written to JSON Lines, MQTT and webhooks."""

    time: str  # ISO 8601 UTC, when the verdict was made
    frame: int
    source: str
    name: Optional[str]
    score: float
    raw_score: float
    is_anomalous: bool
    latency_ms: float  # predict() alone
    frame_to_event_ms: float  # capture → verdict, queueing included
    bundle: str  # the bundle's fingerprint (sha256 of its manifest, 16 hex digits)

    def to_json(self) -> dict[str, Any]:
        row = {
            "time": self.time,
            "frame": self.frame,
            "source": self.source,
            "score": round(self.score, 6),
            "raw_score": self.raw_score,
            "is_anomalous": self.is_anomalous,
            "latency_ms": round(self.latency_ms, 3),
            "frame_to_event_ms": round(self.frame_to_event_ms, 3),
            "bundle": self.bundle,
        }
        if self.name is not None:
            row["name"] = self.name
        return row


@dataclass(frozen=True)
class Scored:
    """What a sink receives: the frame, the detector's prediction and the event (frame and prediction
    are None for a sink that reads only the event)."""

    frame: Optional[Frame]
    prediction: Optional[Prediction]
    event: Event


def make_event(frame: Frame, prediction: Prediction, *, latency_s: float, bundle: str) -> Event:
    now = time.time()
    return Event(
        time=datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
        frame=frame.index,
        source=frame.source,
        name=frame.name,
        score=prediction.score,
        raw_score=prediction.raw_score,
        is_anomalous=prediction.is_anomalous,
        latency_ms=latency_s * 1e3,
        frame_to_event_ms=(time.perf_counter() - frame.captured_mono) * 1e3 if frame.captured_mono else 0.0,
        bundle=bundle,
    )


class Sink(Protocol):
    name: str
    pixels: bool  # optional (default False): handle() reads item.frame / item.prediction

    def wants(self, event: Event) -> bool:  # optional: False keeps the item out of the queue (not a drop)
        ...

    def handle(self, item: Scored) -> None:  # may block; runs on the sink's own thread
        ...

    def close(self) -> None:  # flush and release; called once, on the sink's thread
        ...


def log(message: str) -> None:
    """One line on stderr for the operator (events go to their sinks, never here)."""
    print(f"edgekit run: {message}", file=sys.stderr, flush=True)


class SinkWorker:
    """Runs one sink on its own thread behind a bounded queue; ``submit`` never blocks."""

    def __init__(
        self,
        sink: Sink,
        *,
        capacity: int = 64,
        pixel_capacity: int = 8,
        on_drop: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.sink = sink
        self.dropped = 0
        self.failed = 0
        self._pixels = bool(getattr(sink, "pixels", False))
        self._wants = getattr(sink, "wants", None)
        self._queue: queue.Queue = queue.Queue(maxsize=pixel_capacity if self._pixels else capacity)
        self._on_drop = on_drop
        self._thread = threading.Thread(target=self._loop, name=f"sink-{sink.name}", daemon=True)
        self._thread.start()

    def submit(self, item: Scored) -> bool:
        """Queue ``item`` for the sink; False (and counted) when the sink is too far behind."""
        if self._wants is not None and not self._wants(item.event):
            return True
        if not self._pixels:
            item = Scored(frame=None, prediction=None, event=item.event)
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop(self.sink.name)
            return False

    def close(self, timeout: float = 10.0) -> None:
        """Let the sink finish what is queued (at most ``timeout`` s), then close it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
                break
            except queue.Full:
                log(f"sink {self.sink.name} did not drain in {timeout:.0f} s; closing it anyway")
                self._abandon()
        self._thread.join(max(0.1, deadline - time.monotonic()))

    def _abandon(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
                self.dropped += 1
            except queue.Empty:
                return

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            try:
                self.sink.handle(item)
            except Exception as exc:  # a sink's failure is logged and counted, never fatal to inference
                self.failed += 1
                log(f"sink {self.sink.name}: {type(exc).__name__}: {exc}")
        try:
            self.sink.close()
        except Exception as exc:
            log(f"sink {self.sink.name} did not close cleanly: {type(exc).__name__}: {exc}")
