"""One thread budget per Detector, shared by the runtime's inference threads and the numpy head.

A camera's cores are shared with capture, decoding and the OS. Two thread pools that each assume
they own every core (the runtime's, and numpy's BLAS in the head) make each other wait: BLAS
workers keep spinning after a product while the next network call needs those cores. So the head
never uses BLAS threads (one per product, held while any head runs); it splits its own work
into row chunks on the Detector's pool of idle-blocking threads, the same number the runtime got.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, TypeVar

from edgekit.errors import EdgekitError

T = TypeVar("T")

#: Most threads a bundle or caller may ask for.
MAX_THREADS = 256
#: How a Detector spends its threads: one image on all of them, or several images at once.
MODES = ("latency", "throughput")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_count(value: Any, what: str) -> int:
    """A thread count: an integer from 0 (all usable cores) to MAX_THREADS."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_THREADS:
        raise EdgekitError(f"{what} must be an integer from 0 to {MAX_THREADS}, not {value!r}")
    return value


@dataclass(frozen=True)
class Budget:
    """``threads`` in all; ``lanes`` images in flight, each with ``per_lane`` threads.

    latency:    1 lane × threads  (one image at a time on every thread: lowest latency)
    throughput: threads lanes × 1 (one image per thread: most images per second)
    """

    threads: int
    mode: str

    @classmethod
    def resolve(cls, threads: int, mode: str) -> "Budget":
        if mode not in MODES:
            raise EdgekitError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        return cls(threads=thread_count(threads, "threads") or usable_cores(), mode=mode)

    @property
    def lanes(self) -> int:
        return self.threads if self.mode == "throughput" else 1

    @property
    def per_lane(self) -> int:
        return max(1, self.threads // self.lanes)


class _SingleThreadedBlas:
    """Holds numpy's BLAS at one thread while any head runs; the first entrant sets it, the last
    one out restores the caller's setting (threadpoolctl's own context is not safe across threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._restore: Optional[Callable[[], None]] = None

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._restore = _limit_blas(1)
            self._depth += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._restore is not None:
                self._restore()
                self._restore = None


_controller: Any = None


def _limit_blas(threads: int) -> Optional[Callable[[], None]]:
    """Set numpy's BLAS threads; returns what restores them (None without threadpoolctl)."""
    global _controller
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # a declared dependency; without it the head still works, with BLAS's threads
        return None
    if _controller is None:  # finding the loaded BLAS libraries takes a while: once per process
        _controller = ThreadpoolController()
    _release_blas_control()
    limiter = _controller.limit(limits=threads, user_api="blas")

    def restore() -> None:
        _release_blas_control()
        limiter.restore_original_limits()
        _release_blas_control()  # so the caller's own threadpoolctl limits work afterwards

    return restore


def _release_blas_control() -> None:
    """threadpoolctl ≥ 3.8 lets only one thread (the first to set a limit, while it lives) change
    OpenBLAS's process-wide pool and silently ignores the others: without this, a head run on any
    other thread (a pipeline lane, a server thread) kept BLAS's two spinning threads, and predict
    from a non-main thread took 8–9 ms of network time instead of 5–6. The guard's lock already
    keeps our own threads from fighting over the setting."""
    try:
        from threadpoolctl import OpenBLASController
    except ImportError:  # older threadpoolctl: any thread may set the limit
        return
    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


single_threaded_blas = _SingleThreadedBlas()


class HeadPool:
    """Runs a head's independent chunks on ``threads`` threads: the caller's and ``threads − 1``
    workers that block (not spin) while idle. One thread: plain calls, no pool."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._executor: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()

    def chunks(self, total: int, *, smallest: int = 64) -> int:
        """How many pieces to cut ``total`` rows into: two per thread (so a thread the OS preempts
        holds up less), none smaller than ``smallest`` rows."""
        return max(1, min(2 * self.threads, total // max(1, smallest)))

    def map(self, function: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """``[function(item) for item in items]``, the items taken in turn by whichever thread is
        free (the caller included), so a thread the OS preempts holds up one small chunk only."""
        if self.threads == 1 or len(items) < 2:
            return [function(item) for item in items]
        results: list[Any] = [None] * len(items)
        taken = iter(range(len(items)))
        lock = threading.Lock()

        def drain() -> None:
            while True:
                with lock:
                    index = next(taken, None)
                if index is None:
                    return
                results[index] = function(items[index])

        helpers = [self._pool().submit(drain) for _ in range(min(self.threads, len(items)) - 1)]
        try:
            drain()
        finally:
            for helper in helpers:
                helper.result()  # re-raises a helper's exception
        return results

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.threads - 1, thread_name_prefix="edgekit-head")
            return self._executor

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None


class Lanes:
    """``count`` persistent threads that run callers' work, one piece each at a time. Callers wait
    their turn first come, first served; an idle lane is woken last in, first out, so a lone caller
    keeps meeting the same thread (the runtimes keep per-thread state: threads taking turns at one
    onnxruntime session cost 5–10 % more per call). Lanes start on demand and block in C, without
    the GIL, while idle; ``close`` ends them once idle (they start again when needed)."""

    def __init__(self, count: int, *, name: str = "edgekit-lane") -> None:
        self.count = max(1, count)
        self._name = name
        self._lock = threading.Lock()
        self._idle: list[_Lane] = []
        self._waiting: deque[_Work] = deque()
        self._running = 0
        self._closing = False
        self._local = threading.local()

    def run(self, function: Callable[[], T]) -> T:
        """``function()`` on a lane (directly, when called from one of these lanes)."""
        if getattr(self._local, "lane", False):
            return function()
        return self._submit(function).wait()

    def map(self, function: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """``[function(item) for item in items]``, as many at once as there are lanes."""
        if getattr(self._local, "lane", False):
            return [function(item) for item in items]
        pieces = [self._submit(lambda item=item: function(item)) for item in items]
        return [piece.wait() for piece in pieces]

    def close(self) -> None:
        with self._lock:
            self._closing = True
            idle, self._idle = self._idle, []
            self._running -= len(idle)
        for lane in idle:
            lane.hand(None)

    def _submit(self, function: Callable[[], Any]) -> "_Work":
        work = _Work(function)
        with self._lock:
            self._closing = False
            if self._idle:
                self._idle.pop().hand(work)
            elif self._running < self.count:
                self._running += 1
                lane = _Lane(self, work)
                threading.Thread(target=lane.loop, name=f"{self._name}-{self._running}", daemon=True).start()
            else:
                self._waiting.append(work)
        return work

    def _next(self, lane: "_Lane") -> "Optional[_Work]":
        """The work a lane that has just finished takes next; None: it waits, idle; _END: it ends."""
        with self._lock:
            if self._waiting:
                return self._waiting.popleft()
            if self._closing:
                self._running -= 1
                return _END
            self._idle.append(lane)
            return None


class _Work:
    """One caller's piece of work and its outcome; ``done`` is released once a lane has run it."""

    def __init__(self, function: Callable[[], Any]) -> None:
        self.function = function
        self.done = threading.Lock()
        self.done.acquire()
        self.result: Any = None
        self.error: Optional[BaseException] = None

    def wait(self) -> Any:
        self.done.acquire()
        if self.error is not None:
            raise self.error
        return self.result


_END = _Work(lambda: None)


class _Lane:
    """One lane thread; ``hand`` gives it its next piece of work (None ends it) while it is idle."""

    def __init__(self, lanes: Lanes, first: _Work) -> None:
        self._lanes = lanes
        self._next: Optional[_Work] = first
        self._handed = threading.Lock()
        self._handed.acquire()

    def hand(self, work: Optional[_Work]) -> None:
        self._next = work
        self._handed.release()

    def loop(self) -> None:
        self._lanes._local.lane = True
        work = self._next
        while work is not None and work is not _END:
            try:
                work.result = work.function()
            except BaseException as exc:  # the caller raises it
                work.error = exc
            finally:
                work.function = None  # type: ignore[assignment]  # drop the closure (and what it holds)
                work.done.release()
            work = self._lanes._next(self)
            if work is None:  # idle until handed work, or None to end
                self._handed.acquire()
                work = self._next


def split(total: int, pieces: int) -> list[slice]:
    """``pieces`` contiguous slices covering range(total), sizes differing by at most one."""
    pieces = max(1, min(pieces, total)) if total else 1
    bounds = [total * k // pieces for k in range(pieces + 1)]
    return [slice(bounds[k], bounds[k + 1]) for k in range(pieces)]
