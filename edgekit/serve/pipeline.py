"""The frame pipeline of ``edgekit run``: capture thread → latest-frame slot → inference → sinks.

Capture runs on its own thread. A live source (camera, stream) writes into a one-frame slot: a
frame not taken before the next one arrives is replaced and counted as dropped, so the service
never falls behind and never queues without bound. A file source waits instead, so every image
of a video or folder is scored. Each sink sits behind a :class:`SinkWorker`, so a slow disk,
broker or web server can never stall inference. ``stop`` (set by SIGINT/SIGTERM) ends the loop
after the current frame; sinks are then flushed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from edgekit.errors import EdgekitError
from edgekit.runtime.detector import Detector
from edgekit.serve.events import Frame, Scored, Sink, SinkWorker, log, make_event
from edgekit.serve.sources import Source

_END = object()  # the capture thread's last word


class FrameSlot:
    """Hands frames from the capture thread to inference.

    ``latest_only``: one slot, a newer frame replaces an untaken one (live sources). Otherwise a
    short queue whose ``put`` waits for room (file sources: nothing is skipped).
    """

    def __init__(self, *, latest_only: bool, depth: int = 2) -> None:
        self.latest_only = latest_only
        self._depth = 1 if latest_only else depth
        self._items: list = []
        self._cond = threading.Condition()

    def put(self, item, stop: threading.Event) -> bool:
        """Store ``item``; True when it replaced a frame nobody took."""
        with self._cond:
            if self.latest_only:
                replaced = bool(self._items) and self._items[-1] is not _END
                self._items = [item]
                self._cond.notify_all()
                return replaced
            while len(self._items) >= self._depth and not stop.is_set():
                self._cond.wait(0.1)
            self._items.append(item)
            self._cond.notify_all()
            return False

    def close(self) -> None:
        """Append the end marker (never replaced, never waiting for room)."""
        with self._cond:
            self._items.append(_END)
            self._cond.notify_all()

    def take(self, timeout: float):
        """The next item, or None when nothing came within ``timeout`` seconds."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item = self._items.pop(0)
            self._cond.notify_all()
            return item


@dataclass
class RunSummary:
    """What a run did, for the last log line and the tests."""

    frames: int = 0  # frames scored
    anomalies: int = 0
    dropped: int = 0  # live frames replaced before inference could take them
    failed: int = 0  # frames whose scoring raised an EdgekitError (logged, skipped)
    sink_dropped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    reason: str = ""  # why the run ended


class Pipeline:
    """Scores a source's frames with one Detector and hands every verdict to the sinks."""

    def __init__(
        self,
        detector: Detector,
        source: Source,
        sinks: Iterable[Sink],
        *,
        monitor=None,
        fps: Optional[float] = None,
        max_frames: Optional[int] = None,
        duration: Optional[float] = None,
        sink_capacity: int = 64,
    ) -> None:
        self.detector = detector
        self.source = source
        self.monitor = monitor
        self.fps, self.max_frames, self.duration = fps, max_frames, duration
        self._sinks = list(sinks)
        self._sink_capacity = sink_capacity
        self._capture_error: Optional[BaseException] = None

    def run(self, stop: threading.Event) -> RunSummary:
        summary = RunSummary()
        slot = FrameSlot(latest_only=self.source.live)
        workers = [
            SinkWorker(sink, capacity=self._sink_capacity, on_drop=self._sink_drop_counter()) for sink in self._sinks
        ]
        capture_stop = threading.Event()
        capture = threading.Thread(
            target=self._capture, args=(slot, capture_stop, summary), name="capture", daemon=True
        )
        started = time.monotonic()
        capture.start()
        try:
            summary.reason = self._infer_loop(slot, stop, workers, summary, started)
        finally:
            capture_stop.set()
            capture.join(timeout=10)
            for worker in workers:
                worker.close()
                summary.sink_dropped[worker.sink.name] = worker.dropped
            summary.seconds = time.monotonic() - started
        if self._capture_error is not None:
            raise self._capture_error
        return summary

    def _sink_drop_counter(self) -> Callable[[str], None]:
        def count(name: str) -> None:
            if self.monitor is not None:
                self.monitor.count_dropped(f"sink:{name}")

        return count

    def _capture(self, slot: FrameSlot, stop: threading.Event, summary: RunSummary) -> None:
        try:
            for frame in self.source.frames(stop):
                if slot.put(frame, stop):
                    summary.dropped += 1
                    if self.monitor is not None:
                        self.monitor.count_dropped("capture")
                if stop.is_set():
                    break
        except EdgekitError as exc:
            self._capture_error = exc
        except Exception as exc:  # an OpenCV or OS failure: end the run with one line, not a hang
            self._capture_error = EdgekitError(f"reading {self.source.text} failed: {type(exc).__name__}: {exc}")
        finally:
            slot.close()

    def _infer_loop(
        self, slot: FrameSlot, stop: threading.Event, workers: list[SinkWorker], summary: RunSummary, started: float
    ) -> str:
        """Score frames on as many threads as the Detector's budget has lanes (one in latency mode);
        verdicts reach the sinks in the order the frames were taken."""
        state = _LoopState(period=1.0 / self.fps if self.fps else 0.0, next_due=started)
        lanes = self.detector.budget.lanes
        if lanes == 1:
            return self._lane(slot, stop, workers, summary, started, state)
        reasons: list[str] = []
        threads = [
            threading.Thread(
                target=lambda: reasons.append(self._lane(slot, stop, workers, summary, started, state)),
                name=f"infer-{k}",
                daemon=True,
            )
            for k in range(lanes)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if state.error is not None:
            raise state.error
        return reasons[0] if reasons else "stopped"

    def _lane(
        self,
        slot: FrameSlot,
        stop: threading.Event,
        workers: list[SinkWorker],
        summary: RunSummary,
        started: float,
        state: "_LoopState",
    ) -> str:
        try:
            while True:
                taken = self._next(slot, stop, started, state)
                if isinstance(taken, str):
                    state.finished.set()  # the other lanes stop taking too
                    return taken
                if taken is None:
                    continue
                order, frame = taken
                self._emit(order, self._score(frame), workers, summary, state)
        except BaseException as exc:  # a bug in one lane ends the run, as it would with one lane
            state.error = state.error or exc
            state.finished.set()
            if threading.current_thread() is threading.main_thread():
                raise
            return "error"

    def _next(self, slot: FrameSlot, stop: threading.Event, started: float, state: "_LoopState"):
        """(order, frame) to score; None to look again; or the reason to end (a string)."""
        with state.take_lock:
            if state.finished.is_set():
                return state.reason or "stopped"
            if stop.is_set():
                state.reason = "stopped by signal"
            elif self.max_frames is not None and state.taken >= self.max_frames:
                state.reason = f"--max-frames {self.max_frames} reached"
            elif self.duration is not None and time.monotonic() - started >= self.duration:
                state.reason = f"--duration {self.duration:g} s reached"
            if state.reason:
                return state.reason
            if state.period:
                wait = state.next_due - time.monotonic()
                if wait > 0 and stop.wait(min(wait, self._time_left(started))):
                    return None
                if self.duration is not None and time.monotonic() - started >= self.duration:
                    return None
            item = slot.take(timeout=0.2)
            if item is None:
                return None
            if item is _END:
                state.reason = "source ended"
                return state.reason
            if state.period:
                state.next_due = max(state.next_due + state.period, time.monotonic())
            state.taken += 1
            return state.taken - 1, item

    def _time_left(self, started: float) -> float:
        return float("inf") if self.duration is None else max(0.0, started + self.duration - time.monotonic())

    def _score(self, frame: Frame) -> Optional[Scored]:
        t0 = time.perf_counter()
        try:
            prediction = self.detector.predict(frame.image)
        except EdgekitError as exc:
            log(f"frame {frame.index} ({frame.name or frame.source}) not scored: {exc}")
            return None
        event = make_event(frame, prediction, latency_s=time.perf_counter() - t0, bundle=self.detector.fingerprint)
        return Scored(frame=frame, prediction=prediction, event=event)

    def _emit(
        self, order: int, item: Optional[Scored], workers: list[SinkWorker], summary: RunSummary, state: "_LoopState"
    ) -> None:
        """Hand verdicts to the sinks in taking order (a lane that finished early waits its turn)."""
        with state.emit_lock:
            state.pending[order] = item
            while state.emitted in state.pending:
                ready = state.pending.pop(state.emitted)
                state.emitted += 1
                if ready is None:
                    summary.failed += 1
                    continue
                summary.frames += 1
                summary.anomalies += int(ready.prediction.is_anomalous)
                if self.monitor is not None:
                    self.monitor.record(ready)
                for worker in workers:
                    worker.submit(ready)


@dataclass
class _LoopState:
    """What the inference lanes of one run share."""

    period: float
    next_due: float
    taken: int = 0
    emitted: int = 0
    reason: str = ""
    error: Optional[BaseException] = None
    pending: dict = field(default_factory=dict)
    take_lock: threading.Lock = field(default_factory=threading.Lock)
    emit_lock: threading.Lock = field(default_factory=threading.Lock)
    finished: threading.Event = field(default_factory=threading.Event)
