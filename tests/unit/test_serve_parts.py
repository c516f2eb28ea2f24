"""The parts of `edgekit run` that need no model: the frame slot, the size caps of the sinks, the
watched-folder rules and address parsing. Fast; they run on a device-only install too."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from edgekit.errors import EdgekitError
from edgekit.runtime.detector import Prediction
from edgekit.serve.app import RunConfig, parse_address
from edgekit.serve.events import Frame, Scored, SinkWorker, make_event
from edgekit.serve.pipeline import FrameSlot
from edgekit.serve.sinks import FrameStore, JsonlSink
from edgekit.serve.sources import open_source


def _scored(index: int, *, anomalous: bool = True, side: int = 32) -> Scored:
    rng = np.random.default_rng(index)
    frame = Frame(
        index=index,
        image=rng.integers(0, 255, (side, side, 3), dtype=np.uint8),
        source="test",
        captured_mono=time.perf_counter(),
    )
    prediction = Prediction(
        score=0.9 if anomalous else 0.1,
        is_anomalous=anomalous,
        anomaly_map=rng.random((side, side)).astype(np.float32),
        raw_score=float(index),
    )
    return Scored(frame, prediction, make_event(frame, prediction, latency_s=0.01, bundle="0" * 16))


def _feed(sink, items) -> SinkWorker:
    """Items through a SinkWorker, as the pipeline hands them over, then flushed."""
    worker = SinkWorker(sink)
    for item in items:
        assert worker.submit(item)
    worker.close()
    return worker


def test_latest_only_slot_keeps_the_newest_frame_and_counts_the_replaced():
    slot, stop = FrameSlot(latest_only=True), threading.Event()
    replaced = [slot.put(i, stop) for i in range(5)]
    assert replaced == [False, True, True, True, True]
    assert slot.take(0.01) == 4 and slot.take(0.01) is None
    assert slot.put(5, stop) is False  # nothing was waiting: not a drop


def test_file_slot_makes_the_reader_wait_instead_of_dropping():
    slot, stop = FrameSlot(latest_only=False, depth=2), threading.Event()
    slot.put(0, stop)
    slot.put(1, stop)
    writer = threading.Thread(target=slot.put, args=(2, stop))
    writer.start()
    time.sleep(0.2)
    assert writer.is_alive()  # full: the reader waits ...
    assert slot.take(0.1) == 0
    writer.join(2)
    assert not writer.is_alive()  # ... until there is room, and nothing was lost
    assert [slot.take(0.1), slot.take(0.1)] == [1, 2]


def test_anomaly_store_keeps_the_newest_items_within_count_and_size(tmp_path):
    _feed(FrameStore(tmp_path / "a", keep=3), [_scored(index, anomalous=index != 2) for index in range(6)])
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    frames = sorted({int(n.split("_f")[1][:8]) for n in names})
    assert frames == [3, 4, 5] and len(names) == 9  # png + overlay + json each; frame 2 was normal
    assert json.loads((tmp_path / "a" / next(n for n in names if n.endswith(".json"))).read_text())["frame"] == 3
    one_item = sum(p.stat().st_size for p in (tmp_path / "a").iterdir()) / 3
    restarted = FrameStore(tmp_path / "a", keep=100, keep_bytes=int(one_item * 2.5))  # a restart thins too
    assert len(list((tmp_path / "a").iterdir())) == 6
    _feed(restarted, [_scored(9)])
    assert sorted({int(p.name.split("_f")[1][:8]) for p in (tmp_path / "a").iterdir()}) == [5, 9]


def test_events_file_is_rotated_past_its_cap_and_every_line_is_whole(tmp_path):
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path, max_bytes=2000)
    for index in range(40):
        sink.handle(_scored(index))
    sink.close()
    rotated = path.with_name("events.jsonl.1")
    assert path.stat().st_size <= 2000 and rotated.stat().st_size <= 2000
    rows = [json.loads(line) for f in (rotated, path) for line in f.read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(40 - len(rows), 40))  # the newest, in order
    assert set(rows[0]) >= {
        "time",
        "frame",
        "source",
        "score",
        "raw_score",
        "is_anomalous",
        "latency_ms",
        "frame_to_event_ms",
        "bundle",
    }


def test_sink_worker_drops_instead_of_waiting_for_a_slow_sink():
    release = threading.Event()

    class Slow:
        name = "slow"
        handled: list[int] = []

        def handle(self, item):
            release.wait(5)
            self.handled.append(item.event.frame)

        def close(self):
            pass

    worker = SinkWorker(Slow(), capacity=2)
    started = time.perf_counter()
    accepted = [worker.submit(_scored(i)) for i in range(6)]
    assert time.perf_counter() - started < 0.5
    assert accepted.count(False) == worker.dropped >= 3
    release.set()
    worker.close()
    assert Slow.handled == [i for i, ok in enumerate(accepted) if ok]


def test_only_sinks_that_read_pixels_queue_them_and_only_what_they_want(tmp_path):
    class Events:
        name, got = "events", []

        def handle(self, item):
            self.got.append((item.frame, item.prediction, item.event.frame))

        def close(self):
            pass

    _feed(Events(), [_scored(i) for i in range(3)])
    assert Events.got == [(None, None, 0), (None, None, 1), (None, None, 2)]  # the event alone
    store = FrameStore(tmp_path / "a")
    worker = SinkWorker(store, capacity=64, pixel_capacity=2)
    assert worker._queue.maxsize == 2  # frames and maps: a short queue
    assert worker.submit(_scored(0, anomalous=False)) and worker._queue.qsize() == 0  # not wanted: not queued
    worker.close()


def test_watched_folder_takes_a_rewritten_file_again(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "latest.png")
    source = open_source(str(tmp_path), watch=True)
    source.poll_s = 0.05
    stop, seen = threading.Event(), []

    def read():
        for frame in source.frames(stop):
            seen.append(int(frame.image.mean()))

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.5)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "latest.png")
    time.sleep(0.5)
    stop.set()
    reader.join(2)
    assert seen == [0, 200]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("broker", ("broker", 1883)),
        ("[::1]:9000", ("::1", 9000)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
    ],
)
def test_addresses_parse(text, expected):
    assert parse_address(text, default_port=1883, what="--mqtt") == expected


@pytest.mark.parametrize("text", ["host:http", ":80", "host:70000"])
def test_bad_addresses_are_one_error(text):
    with pytest.raises(EdgekitError):
        parse_address(text, default_port=1883, what="--serve")


def test_run_config_refuses_what_cannot_work(tmp_path):
    with pytest.raises(EdgekitError, match="--keep must be positive"):
        RunConfig(bundle=tmp_path, source="0", keep=0)
    with pytest.raises(EdgekitError, match="--token is empty"):
        RunConfig(bundle=tmp_path, serve="127.0.0.1:8080", token=" ")


_STAND_IN_PICAMERA2 = """
import numpy as np
calls = []
class Picamera2:
    def __init__(self, camera_num=0):
        calls.append(("init", camera_num))
    def create_video_configuration(self, main=None):
        return {"main": main}
    def configure(self, config):
        calls.append(("configure", config["main"]["format"]))
    def start(self):
        calls.append(("start",))
    def capture_array(self, name="main"):
        frame = np.zeros((6, 8, 3), np.uint8)
        frame[..., 0] = 200  # BGR888 is [R, G, B] in memory
        return frame
    def stop(self):
        calls.append(("stop",))
    def close(self):
        calls.append(("close",))
"""


def test_pi_camera_frames_are_rgb_and_the_camera_is_released(tmp_path, monkeypatch):
    # picamera2 needs a Pi camera and libcamera; this stand-in follows its documented API so that
    # edgekit's side (format asked for, colour order, release on stop) is pinned here.
    (tmp_path / "picamera2").mkdir()
    (tmp_path / "picamera2" / "__init__.py").write_text(_STAND_IN_PICAMERA2)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "picamera2", raising=False)
    source = open_source("picamera2:1")
    assert source.live
    stop, frames = threading.Event(), []
    for frame in source.frames(stop):
        frames.append(frame)
        if len(frames) == 3:
            stop.set()
    import picamera2

    assert [f.index for f in frames] == [0, 1, 2]
    assert frames[0].image[0, 0].tolist() == [200, 0, 0]
    assert picamera2.calls == [("init", 1), ("configure", "BGR888"), ("start",), ("stop",), ("close",)]


def test_pi_camera_without_picamera2_is_one_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "picamera2", None)
    with pytest.raises(EdgekitError, match="picamera2 is not importable here"):
        open_source("picamera2")


def test_frame_store_can_keep_every_nth_frame_alone_for_fitting(tmp_path):
    store = FrameStore(tmp_path / "frames", keep=3, every=4, option="--save-frames")
    _feed(store, [_scored(index, anomalous=index % 3 == 0) for index in range(20)])
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert [int(n.split("_f")[1][:8]) for n in names] == [8, 12, 16]  # 0, 4, ... thinned to the newest 3
    assert all(n.endswith(".png") for n in names)  # images only: edgekit fit reads the folder as it is
    saved = np.asarray(Image.open(tmp_path / "frames" / names[0]))
    np.testing.assert_array_equal(saved, _scored(8).frame.image)  # lossless
