"""One Detector shared by many threads, on every backend and format the targets offer: each result
equals the serial one, the work runs on the Detector's own lane threads, and the OpenVINO request
pool stays within ``max_parallel``."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

THREADS, IMAGES_PER_THREAD = 4, 6
#: (target, format, precision): x86 OpenVINO in both precisions and the Pi targets' ONNX and TFLite
CASES = [("x86", "openvino", "fp32"), ("x86", "openvino", "int8"), ("rpi4", "onnx", "fp32"), ("rpi4", "tflite", "fp32")]


@pytest.fixture(scope="module")
def bundles(exported) -> dict[tuple[str, str, str], Path]:
    return {case: exported(*case) for case in CASES}


@pytest.fixture(scope="module")
def images(brick) -> list[np.ndarray]:
    """Normal and defective test images, so a result swapped between threads changes the verdict."""
    paths = sorted((brick / "test" / "good").iterdir())[:4] + sorted((brick / "test" / "scratch").iterdir())[:4]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_shared_detector_gives_every_thread_its_serial_result(bundles, images, case):
    import edgekit

    detector = edgekit.load(bundles[case])
    serial = [detector.predict(image) for image in images]
    assert {p.is_anomalous for p in serial} == {False, True}  # swapped results would show
    start = threading.Barrier(THREADS)

    def worker(offset: int) -> list[tuple[int, object]]:
        start.wait()
        order = [(offset + k) % len(images) for k in range(IMAGES_PER_THREAD)]
        return [(i, detector.predict(images[i])) for i in order]

    with ThreadPoolExecutor(THREADS) as pool:
        results = [r for part in pool.map(worker, range(THREADS)) for r in part]
    assert len(results) == THREADS * IMAGES_PER_THREAD
    for index, prediction in results:
        expected = serial[index]
        assert prediction.raw_score == pytest.approx(expected.raw_score, rel=1e-5, abs=1e-6), index
        assert prediction.is_anomalous == expected.is_anomalous
        np.testing.assert_allclose(prediction.anomaly_map, expected.anomaly_map, rtol=1e-5, atol=1e-6)


def test_openvino_pool_never_exceeds_max_parallel(bundles, images):
    import edgekit

    detector = edgekit.load(bundles[("x86", "openvino", "fp32")], max_parallel=2)
    backend = detector.backend
    running, peak, lock = 0, 0, threading.Lock()
    made = []
    create = backend._compiled.create_infer_request

    class CountingRequest:
        """An OpenVINO infer request that counts how many requests run at once."""

        def __init__(self) -> None:
            self.inner = create()
            made.append(self)

        def infer(self, inputs):
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            try:
                return self.inner.infer(inputs)
            finally:
                with lock:
                    running -= 1

    backend._compiled = type("Compiled", (), {"create_infer_request": staticmethod(CountingRequest)})()
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: detector.predict(images[i % len(images)]), range(24)))
    assert peak <= 2 and len(made) <= 2


def test_max_parallel_below_one_is_refused(bundles):
    import edgekit
    from edgekit.errors import EdgekitError

    with pytest.raises(EdgekitError, match="max_parallel must be at least 1"):
        edgekit.load(bundles[("rpi4", "onnx", "fp32")], max_parallel=0)


@pytest.mark.parametrize("mode,lanes", [("latency", 1), ("throughput", 2)])
def test_callers_queue_for_the_detectors_own_lane_threads(bundles, images, mode, lanes):
    """However many threads call, the network runs on the Detector's lane threads only, never
    more at once than the mode's lanes (more callers would oversubscribe the cores)."""
    import edgekit

    detector = edgekit.load(bundles[("rpi4", "onnx", "fp32")], threads=2, mode=mode)
    infer, callers, running, peak, lock = detector.backend.infer, set(), 0, 0, threading.Lock()

    def counting_infer(inputs):
        nonlocal running, peak
        with lock:
            callers.add(threading.current_thread().name)
            running += 1
            peak = max(peak, running)
        try:
            return infer(inputs)
        finally:
            with lock:
                running -= 1

    detector.backend.infer = counting_infer
    with ThreadPoolExecutor(6) as pool:
        scores = list(pool.map(lambda i: detector.predict(images[i % len(images)]).raw_score, range(24)))
    serial = [detector.predict(images[i % len(images)]).raw_score for i in range(24)]
    assert scores == pytest.approx(serial, rel=1e-5)
    assert peak == lanes
    assert len(callers) <= lanes and all(name.startswith("edgekit-lane") for name in callers)
    # a call made from a lane thread runs there instead of waiting for a lane (which would deadlock)
    nested: list = []
    caller = threading.Thread(
        target=lambda: nested.append(detector._lanes.run(lambda: detector.predict(images[0]))), daemon=True
    )
    caller.start()
    caller.join(60)
    assert nested and nested[0].raw_score == pytest.approx(serial[0], rel=1e-5)
    detector.close()
