"""The MQTT sink against a real mosquitto broker (tests/services.py), read by a real paho subscriber.

Each test starts its own broker on a free loopback port and ends it by PID. The e2e test scores real
brick images with the session's PatchCore bundle; the others use hand-made predictions to stay fast.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from typing import Callable

import numpy as np
import pytest
from services import free_port, mosquitto_broker

import edgekit
from edgekit.errors import EdgekitError
from edgekit.runtime.detector import Prediction
from edgekit.serve import mqtt as mqtt_sink
from edgekit.serve.events import Frame, Scored, SinkWorker, make_event
from edgekit.serve.mqtt import MqttSink

paho = pytest.importorskip("paho.mqtt.client")
BUNDLE = "0123456789abcdef"


class Subscriber:
    """A paho client that records every message under ``topic/#`` (retained ones included)."""

    def __init__(self, host: str, port: int, topic: str = "edgekit") -> None:
        self.messages: list[tuple[str, str, bool]] = []
        self._subscribed = threading.Event()
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self._client.on_connect = lambda client, *_: client.subscribe(f"{topic}/#", qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = lambda _c, _u, msg: self.messages.append(
            (msg.topic, msg.payload.decode(), bool(msg.retain))
        )
        self._client.connect(host, port)
        self._client.loop_start()
        assert self._subscribed.wait(5), "the test subscriber could not subscribe"

    def payloads(self, subtopic: str) -> list[str]:
        return [payload for topic, payload, _ in list(self.messages) if topic.endswith("/" + subtopic)]

    def json(self, subtopic: str) -> list[dict]:
        return [json.loads(payload) for payload in self.payloads(subtopic)]

    def wait_for(self, done: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"no {what} within {timeout:g} s; got {self.messages}"
            time.sleep(0.02)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def scored(index: int, prediction: Prediction, *, source: str = "test") -> Scored:
    frame = Frame(
        index=index,
        image=np.zeros((4, 4, 3), np.uint8),
        source=source,
        captured=time.time(),
        captured_mono=time.perf_counter(),
    )
    return Scored(frame, prediction, make_event(frame, prediction, latency_s=0.01, bundle=BUNDLE))


def fake(anomalous: bool) -> Prediction:
    score = 0.9 if anomalous else 0.1
    return Prediction(
        score=score, is_anomalous=anomalous, anomaly_map=np.zeros((4, 4), np.float32), raw_score=score * 10
    )


@pytest.mark.e2e
def test_real_predictions_publish_exactly_the_anomalies_heartbeats_and_status(x86_bundle, brick):
    detector = edgekit.load(x86_bundle)
    good = detector.predict(brick / "test" / "good" / "000.png")
    scratch = detector.predict(brick / "test" / "scratch" / "000.png")
    assert not good.is_anomalous and scratch.is_anomalous
    fingerprint = hashlib.sha256((x86_bundle / "manifest.json").read_bytes()).hexdigest()[:16]
    order = [good, scratch, good, good, scratch, good]
    items = []
    for index, prediction in enumerate(order):
        frame = Frame(index=index, image=np.zeros((4, 4, 3), np.uint8), source="brick")
        items.append(Scored(frame, prediction, make_event(frame, prediction, latency_s=0.01, bundle=fingerprint)))

    with mosquitto_broker() as (host, port):
        subscriber = Subscriber(host, port)
        worker = SinkWorker(MqttSink(host, port, heartbeat_s=0.5, client_id="camera-1"))
        subscriber.wait_for(lambda: "online" in subscriber.payloads("status"), '"online" status')
        for item in items:
            assert worker.submit(item)
        subscriber.wait_for(lambda: len(subscriber.payloads("anomaly")) >= 2, "two anomalies")
        subscriber.wait_for(lambda: len(subscriber.payloads("heartbeat")) >= 2, "two heartbeats")
        worker.close()
        subscriber.wait_for(lambda: "offline" in subscriber.payloads("status"), '"offline" status')
        late = Subscriber(host, port)  # a dashboard that connects later sees the retained status
        late.wait_for(lambda: late.messages != [], "the retained status")
        subscriber.stop()
        late.stop()

    anomalies = subscriber.json("anomaly")
    assert [event["frame"] for event in anomalies] == [1, 4]
    for event in anomalies:
        assert event["is_anomalous"] is True and event["bundle"] == fingerprint and event["source"] == "brick"
        assert event["score"] == pytest.approx(scratch.score, abs=1e-6)
        assert event["raw_score"] == pytest.approx(scratch.raw_score)
    beats = subscriber.json("heartbeat")
    assert {beat["state"] for beat in beats[:-1]} == {"running"}
    assert beats[-1]["state"] == "stopped"
    assert (beats[-1]["frames"], beats[-1]["anomalies"], beats[-1]["bundle"]) == (6, 2, fingerprint)
    assert set(beats[0]) >= {"time", "frames", "anomalies", "uptime_s", "bundle", "state"}
    assert [payload for payload in subscriber.payloads("status")] == ["online", "offline"]
    assert late.messages == [("edgekit/status", "offline", True)]
    assert worker.dropped == worker.failed == 0


def test_a_broker_lost_mid_run_is_reconnected_and_submit_never_blocks(capsys):
    port = free_port()
    with mosquitto_broker(port) as (host, _):
        subscriber = Subscriber(host, port, topic="line1")
        worker = SinkWorker(MqttSink(host, port, topic="line1", heartbeat_s=0.5))
        subscriber.wait_for(lambda: "online" in subscriber.payloads("status"), '"online" status')
        worker.submit(scored(0, fake(True)))
        subscriber.wait_for(lambda: len(subscriber.payloads("anomaly")) == 1, "the first anomaly")
        subscriber.stop()
    # the broker was killed (SIGKILL) here: the sink loses its connection mid-run

    longest_submit = 0.0
    for index in range(1, 151):  # more than the worker's queue holds: a hung handle() would drop frames
        started = time.perf_counter()
        worker.submit(scored(index, fake(index in (50, 100))))
        longest_submit = max(longest_submit, time.perf_counter() - started)
        time.sleep(0.004)  # 0.6 s of frames while the broker is away
    err = ""
    deadline = time.monotonic() + 10
    while "not reachable" not in err:  # the first reconnect attempt (1 s after the loss) failed ...
        assert time.monotonic() < deadline, f"no failed reconnect attempt logged: {err}"
        time.sleep(0.05)
        err += capsys.readouterr().err
    # ... so the next one comes 2 s later: time enough for the broker and our subscriber to be back

    with mosquitto_broker(port):  # the same broker address comes back
        subscriber = Subscriber(host, port, topic="line1")
        subscriber.wait_for(lambda: "online" in subscriber.payloads("status"), "the sink to reconnect", timeout=15)
        worker.submit(scored(151, fake(True)))
        subscriber.wait_for(
            lambda: 151 in [event["frame"] for event in subscriber.json("anomaly")], "an anomaly after the reconnect"
        )
        subscriber.wait_for(lambda: len(subscriber.payloads("heartbeat")) >= 1, "a heartbeat after the reconnect")
        worker.close()
        subscriber.wait_for(lambda: "offline" in subscriber.payloads("status"), '"offline" status')
        subscriber.stop()

    assert longest_submit < 0.05
    assert worker.dropped == worker.failed == 0
    # the anomalies of the outage waited in paho's queue and went out once the broker was back
    assert [event["frame"] for event in subscriber.json("anomaly")] == [50, 100, 151]
    assert subscriber.json("heartbeat")[-1]["frames"] == 152
    err += capsys.readouterr().err
    assert "MQTT connected to" in err and "lost" in err and "reconnected" in err


def test_the_last_will_says_offline_when_the_camera_process_dies():
    with mosquitto_broker() as (host, port):
        subscriber = Subscriber(host, port)
        code = f"import time; from edgekit.serve.mqtt import MqttSink; MqttSink({host!r}, {port}); time.sleep(60)"
        camera = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
        try:
            subscriber.wait_for(lambda: "online" in subscriber.payloads("status"), '"online" status', timeout=30)
        finally:
            camera.kill()  # by its PID; no DISCONNECT is sent, so the broker publishes the will
            camera.wait(10)
        subscriber.wait_for(lambda: "offline" in subscriber.payloads("status"), "the last will")
        subscriber.stop()
    assert subscriber.payloads("status") == ["online", "offline"]


def test_an_unreachable_broker_bounds_the_queue_and_never_hangs(monkeypatch, capsys):
    monkeypatch.setattr(mqtt_sink, "MAX_QUEUED", 5)
    sink = MqttSink("127.0.0.1", free_port(), heartbeat_s=0.2)
    started = time.perf_counter()
    for index in range(12):
        sink.handle(scored(index, fake(True)))
    handled = time.perf_counter() - started
    time.sleep(0.3)  # a heartbeat tick while offline: skipped, not queued
    started = time.perf_counter()
    sink.close()
    closed = time.perf_counter() - started
    assert handled < 0.5 and closed < 3
    assert (sink.anomalies, sink.dropped) == (12, 8)  # 5 anomalies queued; 7 more and the "offline" dropped
    err = capsys.readouterr().err
    assert "not reachable" in err and "dropping new ones" in err


def test_bad_options_are_one_line_errors():
    for options in ({"topic": "a/+/b"}, {"qos": 3}, {"heartbeat_s": 0}, {"port": 0}, {"password": "pw"}):
        with pytest.raises(EdgekitError):
            MqttSink("127.0.0.1", **{"port": 1883, **options})


def test_missing_paho_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)  # what `import` sees when it is not installed
    with pytest.raises(EdgekitError, match=r"pip install 'edgekit-anomaly\[mqtt\]'"):
        MqttSink("127.0.0.1")


@pytest.mark.e2e
def test_edgekit_run_with_mqtt_publishes_the_anomalies_of_its_source(x86_bundle, brick, tmp_path):
    from cli_helpers import run

    inbox = tmp_path / "parts"
    inbox.mkdir()
    for index, name in enumerate(["good/000.png", "scratch/000.png", "good/001.png", "missing/000.png"]):
        (inbox / f"{index}.png").write_bytes((brick / "test" / name).read_bytes())
    with mosquitto_broker() as (host, port):
        subscriber = Subscriber(host, port, topic="line7")
        try:
            result = run(
                "run",
                x86_bundle,
                "--source",
                inbox,
                "--events",
                "none",
                "--mqtt",
                f"{host}:{port}",
                "--mqtt-topic",
                "line7",
            )
            assert result.exit_code == 0, result.output
            subscriber.wait_for(lambda: subscriber.payloads("status")[-1:] == ["offline"], "offline status")
        finally:
            subscriber.stop()
    anomalies = subscriber.json("anomaly")
    assert [(a["frame"], a["name"].rsplit("/", 1)[-1]) for a in anomalies] == [(1, "1.png"), (3, "3.png")]
    assert anomalies[0]["bundle"] == edgekit.load(x86_bundle).fingerprint
    assert subscriber.json("heartbeat")[-1]["state"] == "stopped"
