"""The webhook sink against a real stdlib HTTP server on a loopback port, run behind a real SinkWorker."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from services import free_port

from edgekit.errors import EdgekitError
from edgekit.runtime.detector import Prediction
from edgekit.serve.events import Frame, Scored, SinkWorker, make_event
from edgekit.serve.webhook import WebhookSink


class Receiver:
    """What the server saw: one (status it answered, headers, body) per POST."""

    def __init__(self, statuses: list[int], default: int = 200, delays_s: list[float] = ()) -> None:
        self.statuses, self.default, self.delays_s = list(statuses), default, list(delays_s)
        self.requests: list[tuple[int, dict[str, str], bytes]] = []
        self.arrived = threading.Event()  # set when the first POST comes in, before any delay

    def answer(self) -> int:
        return self.statuses.pop(0) if self.statuses else self.default


@contextmanager
def http_server(receiver: Receiver) -> Iterator[str]:
    """A ThreadingHTTPServer on 127.0.0.1 port 0 answering POSTs as `receiver` says; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            receiver.arrived.set()
            time.sleep(receiver.delays_s.pop(0) if receiver.delays_s else 0.0)
            status = receiver.answer()
            receiver.requests.append((status, dict(self.headers), body))
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args) -> None:  # keep pytest's output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/secret-part"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def scored(index: int, anomalous: bool = True) -> Scored:
    score = 0.8 if anomalous else 0.2
    prediction = Prediction(
        score=score, is_anomalous=anomalous, anomaly_map=np.zeros((4, 4), np.float32), raw_score=score * 3
    )
    frame = Frame(index=index, image=np.zeros((4, 4, 3), np.uint8), source="cam0")
    return Scored(frame, prediction, make_event(frame, prediction, latency_s=0.01, bundle="0123456789abcdef"))


def test_5xx_is_retried_and_the_event_arrives_once_with_the_token():
    receiver = Receiver([503, 503])
    with http_server(receiver) as url:
        worker = SinkWorker(WebhookSink(url, retries=3, backoff_s=0.05, token="s3cret"))
        worker.submit(scored(0, anomalous=False))  # normal frames are not posted
        worker.submit(scored(7))
        worker.close()
    assert [status for status, _, _ in receiver.requests] == [503, 503, 200]
    bodies = [json.loads(body) for status, _, body in receiver.requests if status == 200]
    assert len(bodies) == 1 and bodies[0]["frame"] == 7 and bodies[0]["is_anomalous"] is True
    assert bodies[0]["score"] == 0.8 and bodies[0]["bundle"] == "0123456789abcdef"
    _, headers, _ = receiver.requests[-1]
    assert headers["Authorization"] == "Bearer s3cret" and headers["Content-Type"] == "application/json"
    assert worker.failed == 0 and worker.sink.sent == 1


def test_4xx_gets_one_attempt_and_one_log_line(capsys):
    receiver = Receiver([], default=400)
    with http_server(receiver) as url:
        worker = SinkWorker(WebhookSink(url, retries=3, backoff_s=0.05))
        worker.submit(scored(1))
        worker.close()
    assert len(receiver.requests) == 1 and worker.failed == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "HTTP 400" in lines[0] and "not retried" in lines[0]
    assert "secret-part" not in lines[0]  # a hook's path may be its secret: never logged


def test_a_dead_port_gives_up_after_the_retries_and_the_worker_lives_on(capsys):
    worker = SinkWorker(WebhookSink(f"http://127.0.0.1:{free_port()}/hook", retries=2, backoff_s=0.02))
    started = time.perf_counter()
    worker.submit(scored(1))
    worker.submit(scored(2))
    worker.close()
    assert time.perf_counter() - started < 5
    assert worker.failed == 2  # the first give-up did not stop the worker: the second frame was tried too
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("after 3 attempt(s)" in line for line in lines)
    assert "frame 1" in lines[0] and "frame 2" in lines[1]


def test_a_slow_receiver_never_blocks_submit():
    receiver = Receiver([], delays_s=[2.0])  # the first answer takes 2 s
    with http_server(receiver) as url:
        worker = SinkWorker(WebhookSink(url, timeout_s=5), capacity=1)
        worker.submit(scored(0))
        assert receiver.arrived.wait(5)  # the sink's thread is now stuck in that POST
        started = time.perf_counter()
        accepted = [worker.submit(scored(index)) for index in range(1, 6)]
        submitting = time.perf_counter() - started
        worker.close()
    assert submitting < 0.05
    assert accepted == [True, False, False, False, False] and worker.dropped == 4  # full queue: dropped, never waited
    assert [json.loads(body)["frame"] for _, _, body in receiver.requests] == [0, 1]


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "example.com/hook", "file:///etc/passwd", "http://"])
def test_only_http_and_https_urls_are_accepted(url):
    with pytest.raises(EdgekitError, match="http:// or https://|http://HOST"):
        WebhookSink(url)
