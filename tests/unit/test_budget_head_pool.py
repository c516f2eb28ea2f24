"""The head pool of the thread budget: serial results for every head, work spread and errors re-raised."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest


def test_head_pool_gives_the_serial_results_for_every_head():
    from edgekit.runtime.heads import KnnHead, MahalanobisHead, MapHead
    from edgekit.runtime.threads import HeadPool

    rng = np.random.default_rng(0)
    pool = HeadPool(3)
    knn = KnnHead(
        memory_bank=rng.normal(size=(300, 16)).astype(np.float32), num_neighbors=3, output_height=32, output_width=32
    )
    embeddings = rng.normal(size=(2, 16, 16, 16)).astype(np.float32)
    for head, inputs in (
        (knn, embeddings),
        (
            MahalanobisHead(
                mean=rng.normal(size=(256, 16)),
                inv_covariance=np.tile(np.eye(16), (256, 1, 1)),
                output_height=32,
                output_width=32,
            ),
            embeddings,
        ),
        (MapHead(output_height=32, output_width=32, blur_sigma=2.0), rng.random((3, 1, 16, 16)).astype(np.float32)),
    ):
        serial, parallel = head(inputs), head(inputs, pool=pool)
        np.testing.assert_array_equal(parallel[0], serial[0])
        np.testing.assert_array_equal(parallel[1], serial[1])
    pool.close()


def test_head_pool_spreads_work_and_reraises():
    from edgekit.runtime.threads import HeadPool

    pool = HeadPool(2)
    seen = set()

    def work(item: int) -> int:
        seen.add(threading.get_ident())
        time.sleep(0.01)
        return item * item

    assert pool.map(work, list(range(8))) == [k * k for k in range(8)]
    assert len(seen) == 2

    def fail(item: int) -> int:
        if item == 5:
            raise ValueError("five")
        return item

    with pytest.raises(ValueError, match="five"):
        pool.map(fail, list(range(8)))
    pool.close()


def test_blas_guard_holds_blas_at_one_thread_on_any_thread():
    """threadpoolctl ≥ 3.8 lets only the first thread that set a limit change OpenBLAS and silently
    ignores the others: the head's guard must still hold BLAS at one thread on a lane or server
    thread after the main thread used it, and restore the setting afterwards."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from edgekit.runtime.threads import single_threaded_blas

    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):  # the main thread takes control
        before = blas_threads()
        if not before or max(before) < 2:
            pytest.skip("this numpy's BLAS runs one thread only")
        with single_threaded_blas:
            pass
        seen: list[list[int]] = []

        def on_another_thread() -> None:
            with single_threaded_blas:
                seen.append(blas_threads())
            seen.append(blas_threads())

        thread = threading.Thread(target=on_another_thread)
        thread.start()
        thread.join()
        assert seen[0] == [1] * len(before)
        assert seen[1] == before
        assert blas_threads() == before


def test_lanes_run_everything_on_at_most_count_threads_and_reraise():
    from edgekit.runtime.threads import Lanes

    lanes = Lanes(2)
    running, peak, names, lock = 0, 0, set(), threading.Lock()

    def work(item: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            names.add(threading.current_thread().name)
        time.sleep(0.005)
        with lock:
            running -= 1
        if item == 13:
            raise ValueError("thirteen")
        return item * item

    callers = [threading.Thread(target=lambda k=k: results.append(lanes.run(lambda: work(k)))) for k in range(8)]
    results: list[int] = []
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert sorted(results) == [k * k for k in range(8)]
    assert peak == 2 and len(names) == 2 and all(n.startswith("edgekit-lane") for n in names)
    assert lanes.map(work, list(range(6))) == [k * k for k in range(6)]
    with pytest.raises(ValueError, match="thirteen"):
        lanes.map(work, [12, 13, 14])
    # from a lane, work runs in place (waiting for a lane there would wait for itself)
    assert lanes.run(lambda: lanes.run(lambda: threading.current_thread().name)).startswith("edgekit-lane")
    lanes.close()


def test_a_lone_caller_keeps_meeting_the_same_lane_and_close_ends_idle_lanes():
    from edgekit.runtime.threads import Lanes

    lanes = Lanes(3, name="lone-caller-test")  # other tests' Detectors may still have lanes of their own
    lanes.map(lambda k: time.sleep(0.01), range(3))  # start all three
    assert sum(t.name.startswith("lone-caller-test") for t in threading.enumerate()) == 3
    seen = {lanes.run(lambda: threading.get_ident()) for _ in range(20)}
    assert len(seen) == 1
    lanes.close()
    deadline = time.monotonic() + 10
    while any(t.name.startswith("lone-caller-test") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name.startswith("lone-caller-test") for t in threading.enumerate())
    assert lanes.run(lambda: 7) == 7  # a closed Lanes starts a lane again when needed
    lanes.close()
