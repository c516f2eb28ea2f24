"""One thread budget per Detector: the runtime and the numpy head together never keep more threads
busy than ``threads``, both modes give the serial scores, and bad budgets are one clear line."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.errors import EdgekitError

CASES = [("x86", "openvino", "fp32"), ("rpi4", "onnx", "fp32"), ("rpi4", "tflite", "fp32")]
IDS = ["-".join(c) for c in CASES]


@pytest.fixture(scope="module")
def bundles(exported) -> dict[tuple[str, str, str], Path]:
    return {case: exported(*case) for case in CASES}


@pytest.fixture(scope="module")
def images(brick) -> list[np.ndarray]:
    paths = sorted((brick / "test" / "good").iterdir())[:3] + sorted((brick / "test" / "scratch").iterdir())[:3]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def _task_cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) of every thread of this process, by thread id."""
    ticks = os.sysconf("SC_CLK_TCK")
    spent = {}
    for task in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{task}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        spent[int(task)] = (int(fields[11]) + int(fields[12])) / ticks
    return spent


def _busy_threads(work, seconds: float = 1.5) -> tuple[int, dict[int, float]]:
    """Threads that were on a CPU for more than a fifth of the wall time while ``work`` ran in a loop
    (spinning pools would show up here even between calls)."""
    work()  # pools and caches exist before the window
    before, started = _task_cpu_seconds(), time.perf_counter()
    while time.perf_counter() - started < seconds:
        work()
    wall = time.perf_counter() - started
    after = _task_cpu_seconds()
    shares = {tid: (after[tid] - before.get(tid, 0.0)) / wall for tid in after}
    return sum(share > 0.2 for share in shares.values()), shares


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_one_thread_budget_keeps_one_thread_busy(bundles, images, case):
    import edgekit

    detector = edgekit.load(bundles[case], threads=1)
    busy, shares = _busy_threads(lambda: detector.predict(images[3]))
    assert busy <= 1, f"{busy} threads busy with threads=1: {sorted(shares.values(), reverse=True)[:4]}"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_the_head_keeps_numpys_blas_threads_idle(bundles, images):
    """The kNN head's matrix product runs on the Detector's threads, not on BLAS's own pool, whose
    workers keep spinning after each product and take the cores the next network call needs."""
    import edgekit

    detector = edgekit.load(bundles[CASES[1]], threads=2)
    embeddings = detector.embed([images[3]])
    busy, shares = _busy_threads(lambda: detector.run_head(embeddings))
    assert busy <= 2, sorted(shares.values(), reverse=True)[:4]
    blas_like = {tid for tid in shares if tid != threading.get_native_id()} - _pool_threads(detector)
    assert sum(shares[tid] for tid in blas_like) < 0.2, {tid: shares[tid] for tid in blas_like}


def _pool_threads(detector) -> set[int]:
    executor = detector._head_pool._executor
    return {thread.native_id for thread in (executor._threads if executor else ())}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_budget_and_mode_gives_the_same_scores(bundles, images, case):
    import edgekit

    reference = [p.raw_score for p in edgekit.load(bundles[case], threads=1).predict_batch(images)]
    for threads, mode in ((2, "latency"), (2, "throughput"), (3, "throughput")):
        detector = edgekit.load(bundles[case], threads=threads, mode=mode)
        assert detector.budget.lanes == (threads if mode == "throughput" else 1)
        scores = [p.raw_score for p in detector.predict_batch(images, batch_size=2)]
        np.testing.assert_allclose(scores, reference, rtol=1e-5, err_msg=f"threads={threads} {mode}")


def test_throughput_mode_runs_lanes_at_once(bundles, images):
    """LiteRT: throughput mode gets one interpreter per lane; latency mode keeps one (which already
    uses every thread), so concurrent callers wait for it."""
    import edgekit

    busy = edgekit.load(bundles[CASES[2]], threads=2, mode="throughput")
    busy.predict_batch(images * 2, batch_size=1)
    assert busy.backend._idle.qsize() == 2
    single = edgekit.load(bundles[CASES[2]], threads=2)
    single.predict_batch(images, batch_size=1)
    assert single.backend.max_parallel == 1 and single.backend._idle.qsize() == 1


def test_budget_reaches_the_runtimes(bundles):
    import edgekit

    openvino = edgekit.load(bundles[CASES[0]], threads=1)
    assert int(openvino.backend._compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    streams = edgekit.load(bundles[CASES[0]], threads=2, mode="throughput")
    assert int(streams.backend._compiled.get_property("NUM_STREAMS")) == 2
    onnx = edgekit.load(bundles[CASES[1]], threads=1)
    assert onnx.budget.threads == 1 and onnx.budget.per_lane == 1


def test_default_budget_is_every_usable_core(bundles):
    import edgekit
    from edgekit.runtime.threads import usable_cores

    detector = edgekit.load(bundles[CASES[0]])  # x86: threads = 0
    assert detector.budget.threads == usable_cores() and detector.budget.mode == "latency"
    pi = edgekit.load(bundles[CASES[1]])  # rpi4: 4 threads, but never more than the cores here
    assert pi.budget.threads == min(4, usable_cores())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"threads": -1}, "threads must be an integer from 0 to 256"),
        ({"threads": 1.5}, "threads must be an integer"),
        ({"mode": "fast"}, "mode must be one of latency, throughput"),
    ],
)
def test_bad_budgets_are_one_clear_line(bundles, options, message):
    import edgekit

    with pytest.raises(EdgekitError, match=message):
        edgekit.load(bundles[CASES[1]], **options)
