"""`edgekit run`'s page and HTTP API, all real: the x86 OpenVINO bundle, the stdlib server on a free
loopback port, http.client / raw sockets as clients, and headless Chromium for the page.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from browser import is_blank, open_served_page
from PIL import Image

from edgekit.runtime.detector import load
from edgekit.serve.events import Frame, Scored, make_event
from edgekit.serve.http import HttpService
from edgekit.serve.monitor import LATENCY_BUCKETS_S, Monitor
from edgekit.serve.sources import public_source

pytestmark = pytest.mark.e2e

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def detector(x86_bundle):
    return load(x86_bundle)


@pytest.fixture
def server(detector):
    with HttpService(detector, Monitor(detector), port=0) as service:
        yield service


def images(brick: Path, folder: str) -> list[Path]:
    return sorted((brick / "test" / folder).glob("*.png"))


def call(
    service: HttpService, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, http.client.HTTPResponse, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response, response.read()
    finally:
        connection.close()


def raw_exchange(service: HttpService, data: bytes, *, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send bytes as they are, read until the server closes; (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def one_line_error(body: bytes) -> str:
    """The body must be exactly one line of JSON with a string "error" (and never a traceback)."""
    assert body.endswith(b"\n") and body.count(b"\n") == 1, body[:300]
    assert b"Traceback" not in body
    payload = json.loads(body)
    assert list(payload) == ["error"] and isinstance(payload["error"], str) and payload["error"]
    return payload["error"]


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but which holds no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


# -- POST /predict ---------------------------------------------------------------------------------


def test_good_image_scores_as_detector_predict_to_1e6_and_is_recorded_as_http(server, detector, brick):
    path = images(brick, "good")[0]
    status, response, body = call(server, "POST", "/predict", path.read_bytes())
    assert status == 200 and response.getheader("Content-Type") == "application/json"
    assert body.count(b"\n") == 1
    reply = json.loads(body)
    expected = detector.predict(path)
    assert set(reply) == {"score", "raw_score", "is_anomalous", "latency_ms", "bundle", "width", "height"}
    assert reply["score"] == pytest.approx(expected.score, abs=1e-6)
    assert reply["raw_score"] == pytest.approx(expected.raw_score, abs=1e-6)
    assert reply["is_anomalous"] is False is expected.is_anomalous
    assert reply["bundle"] == detector.fingerprint and re.fullmatch(r"[0-9a-f]{16}", reply["bundle"])
    assert (reply["width"], reply["height"]) == (256, 256) and reply["latency_ms"] > 0
    state = server.monitor.snapshot()
    assert state["frames"] == 1 and state["last"]["source"] == "http"
    assert state["last"]["score"] == reply["score"]


def test_scratch_image_is_anomalous_and_overlay_is_a_base64_png_of_the_image(server, detector, brick):
    path = images(brick, "scratch")[0]
    status, _, body = call(server, "POST", "/predict?overlay=1", path.read_bytes())
    reply = json.loads(body)
    assert status == 200 and reply["is_anomalous"] is True
    assert reply["score"] == pytest.approx(detector.predict(path).score, abs=1e-6)
    with Image.open(io.BytesIO(base64.b64decode(reply["overlay_png_base64"]))) as overlay:
        assert overlay.format == "PNG" and overlay.size == (256, 256) and overlay.mode == "RGB"


def test_grey_image_is_scored_as_its_three_channel_copy(server, detector, brick):
    grey = np.asarray(Image.open(images(brick, "good")[1]).convert("L"))
    status, _, body = call(server, "POST", "/predict", png_bytes(grey))
    assert status == 200
    assert json.loads(body)["score"] == pytest.approx(
        detector.predict(np.repeat(grey[:, :, None], 3, 2)).score, abs=1e-6
    )


def test_jpeg_exif_orientation_is_applied_before_scoring(server):
    wide = np.zeros((100, 200, 3), np.uint8)
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.fromarray(wide).save(buffer, format="JPEG", exif=exif)
    status, _, body = call(server, "POST", "/predict", buffer.getvalue())
    assert status == 200 and (json.loads(body)["width"], json.loads(body)["height"]) == (100, 200)


@pytest.mark.parametrize(
    "name, body, status",
    [
        ("garbage bytes", b"this is not an image \x00\x01\x02" * 50, 415),
        ("truncated PNG", None, 422),
        ("header claims 64 megapixels", png_header_only(8000, 8000), 413),
        ("header claims 400 megapixels (Pillow's bomb check)", png_header_only(20000, 20000), 413),
        ("one pixel", png_bytes(np.zeros((1, 1, 3), np.uint8)), 422),
        ("empty body", b"", 400),
    ],
)
def test_bad_body_is_a_4xx_with_one_line_json_and_the_server_keeps_serving(server, brick, name, body, status):
    if body is None:
        body = images(brick, "good")[0].read_bytes()[:3000]
    got, response, payload = call(server, "POST", "/predict", body)
    assert got == status, payload
    assert response.getheader("Content-Type") == "application/json"
    one_line_error(payload)
    assert call(server, "GET", "/healthz")[0] == 200


def test_oversize_body_is_413_before_the_server_reads_it(detector):
    with HttpService(detector, Monitor(detector), port=0, max_body_bytes=2**20) as service:
        # 1. Only headers and 64 KiB of a 50 MB body are sent: the answer comes without the rest.
        head = (
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {50 * 2**20}\r\n\r\n"
        ).encode()
        started = time.monotonic()
        status, headers, body = raw_exchange(service, head + b"\0" * 65536)
        assert status == 413 and headers["connection"] == "close"
        assert "50 MB" in one_line_error(body) or "52428800" in one_line_error(body)
        assert time.monotonic() - started < 5
        # 2. With Expect: 100-continue the client learns it before sending any of the body.
        status, _, body = raw_exchange(service, head.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
        assert status == 413
        one_line_error(body)
        # 3. A client that sends the whole 3 MB anyway still reads the 413 (the server drains, then closes).
        status, _, body = call(service, "POST", "/predict", b"\0" * (3 * 2**20))
        assert status == 413
        one_line_error(body)
        assert call(service, "GET", "/healthz")[0] == 200


@pytest.mark.parametrize(
    "length_headers, status",
    [
        ("", 411),
        ("Content-Length: abc\r\n", 400),
        ("Content-Length: -5\r\n", 400),
        ("Content-Length: 10\r\nContent-Length: 12\r\n", 400),
        ("Transfer-Encoding: chunked\r\n", 411),
    ],
)
def test_missing_invalid_or_chunked_length_is_refused(server, length_headers, status):
    request = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n{length_headers}\r\n".encode()
    got, _, body = raw_exchange(server, request)
    assert got == status
    one_line_error(body)


def test_unexpected_failure_is_500_with_one_json_line_and_one_log_line(detector, brick, capfd):
    def broken_sink(item: Scored) -> None:
        raise RuntimeError("the sink broke")

    with HttpService(detector, Monitor(detector), port=0, on_scored=broken_sink) as service:
        status, _, body = call(service, "POST", "/predict", images(brick, "good")[0].read_bytes())
        assert status == 500
        assert "RuntimeError" in one_line_error(body)
        assert call(service, "GET", "/healthz")[0] == 200
    logged = [line for line in capfd.readouterr().err.splitlines() if line.startswith("edgekit run: http")]
    assert len(logged) == 1 and "RuntimeError: the sink broke" in logged[0] and "Traceback" not in logged[0]


# -- token, routes, hosts, connections --------------------------------------------------------------


def test_token_is_needed_everywhere_but_healthz_and_the_page_may_pass_it_in_the_url(detector, brick):
    good = images(brick, "good")[0].read_bytes()
    with HttpService(detector, Monitor(detector), port=0, token=TOKEN) as service:
        assert call(service, "GET", "/healthz")[0] == 200
        for path in ("/", "/state", "/metrics", "/bundle", "/frame.jpg", "/nowhere"):
            status, response, body = call(service, "GET", path)
            assert status == 401 and response.getheader("WWW-Authenticate", "").startswith("Bearer")
            one_line_error(body)
            assert call(service, "GET", path, headers={"Authorization": "Bearer wrong-token"})[0] == 401
        assert call(service, "GET", "/bundle", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert call(service, "GET", f"/state?token={TOKEN}")[0] == 200
        assert call(service, "GET", "/state?token=wrong")[0] == 401
        status, _, body = call(service, "POST", "/predict", good)
        assert status == 401
        one_line_error(body)
        assert call(service, "POST", f"/predict?token={TOKEN}", good)[0] == 401  # the URL form is for GET only
        assert call(service, "POST", "/predict", good, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_unknown_path_wrong_method_and_malformed_requests_are_one_line_json(server):
    status, _, body = call(server, "GET", "/nowhere")
    assert status == 404
    one_line_error(body)
    status, response, body = call(server, "GET", "/predict")
    assert status == 405 and response.getheader("Allow") == "POST"
    one_line_error(body)
    status, _, body = call(server, "DELETE", "/state")
    assert status == 501
    one_line_error(body)
    status, _, body = raw_exchange(server, b"NONSENSE\r\n\r\n")
    assert status == 400
    one_line_error(body)


def test_loopback_service_refuses_foreign_host_headers(server):
    """A page on another site that rebinds its name to 127.0.0.1 must not read frames or state."""
    status, _, body = call(server, "GET", "/state", headers={"Host": "attacker.example:8080"})
    assert status == 403
    one_line_error(body)
    assert call(server, "GET", "/state", headers={"Host": f"localhost:{server.port}"})[0] == 200
    assert call(server, "GET", "/state", headers={"Host": "[::1]:80"})[0] == 200


def test_connections_over_the_cap_get_503_and_stop_ends_idle_keepalive_connections(detector):
    service = HttpService(detector, Monitor(detector), port=0, max_connections=2)
    service.start()
    idle = [http.client.HTTPConnection("127.0.0.1", service.port, timeout=10) for _ in range(2)]
    for connection in idle:
        connection.request("GET", "/healthz")
        assert connection.getresponse().read() == b'{"status":"ok"}\n'  # kept alive, idle
    status, _, body = raw_exchange(service, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 503
    one_line_error(body)
    started = time.monotonic()
    service.stop()
    assert time.monotonic() - started < 3  # did not wait for the idle connections' 30 s timeout
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", service.port), timeout=2).close()
    for connection in idle:
        connection.close()


# -- concurrency -----------------------------------------------------------------------------------


def test_eight_concurrent_predictions_each_get_their_own_images_score(detector, brick):
    paths = images(brick, "good")[:4] + images(brick, "scratch")[:2] + images(brick, "stain")[:2]
    expected = [detector.predict(path) for path in paths]
    bodies = [path.read_bytes() for path in paths]
    with HttpService(detector, Monitor(detector), port=0, max_concurrent=8) as service:
        for _ in range(3):
            barrier = threading.Barrier(len(paths))
            replies: list = [None] * len(paths)

            def post(index: int) -> None:
                connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=60)
                connection.connect()
                barrier.wait()
                connection.request("POST", "/predict", body=bodies[index])
                response = connection.getresponse()
                replies[index] = (response.status, json.loads(response.read()))
                connection.close()

            threads = [threading.Thread(target=post, args=(index,)) for index in range(len(paths))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            for (status, reply), truth in zip(replies, expected):
                assert status == 200
                assert reply["score"] == pytest.approx(truth.score, abs=1e-6)
                assert reply["raw_score"] == pytest.approx(truth.raw_score, abs=1e-6)
        assert service.monitor.snapshot()["frames"] == 3 * len(paths)


# -- /metrics, /bundle, /healthz -------------------------------------------------------------------

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\["\\n])*)"(?:,|$)')


def parse_prometheus(text: str) -> dict[tuple[str, frozenset], float]:
    """A strict reader of the text exposition format: TYPE before samples, valid names and labels."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram") and name not in types
            types[name] = kind
            continue
        match = _SAMPLE.fullmatch(line)
        assert match, line
        name, labels, value = match.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"{name} has no # TYPE line before it"
        if types[family] == "counter":
            assert name.endswith("_total")
        pairs = _LABEL.findall(labels or "")
        assert "".join(f'{k}="{v}",' for k, v in pairs).rstrip(",") == (labels or ""), line
        key = (name, frozenset(pairs))
        assert key not in samples, f"duplicate sample {line}"
        samples[key] = float(value)
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_is_prometheus_text_and_its_counters_rise(server, brick):
    status, response, body = call(server, "GET", "/metrics")
    assert status == 200 and response.getheader("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    before = parse_prometheus(body.decode())
    assert metric(before, "edgekit_frames_total") == 0
    assert 1.5e9 < metric(before, "edgekit_process_start_time_seconds") <= time.time()
    for path in images(brick, "good")[:1] + images(brick, "scratch")[:1]:
        assert call(server, "POST", "/predict", path.read_bytes())[0] == 200
    call(server, "POST", "/predict", b"garbage")
    server.monitor.count_dropped("capture", n=3)
    server.monitor.count_dropped('sink:odd "name"\\')
    after = parse_prometheus(call(server, "GET", "/metrics")[2].decode())
    assert metric(after, "edgekit_frames_total") == 2 and metric(after, "edgekit_anomalies_total") == 1
    assert metric(after, "edgekit_dropped_frames_total", reason="capture") == 3
    assert metric(after, "edgekit_dropped_frames_total", reason='sink:odd \\"name\\"\\\\') == 1
    assert metric(after, "edgekit_http_requests_total", path="/predict", code="200") == 2
    assert metric(after, "edgekit_http_requests_total", path="/predict", code="415") == 1
    assert metric(after, "edgekit_http_requests_total", path="/metrics", code="200") == 1
    buckets = [metric(after, "edgekit_inference_latency_seconds_bucket", le=repr(b)) for b in LATENCY_BUCKETS_S]
    assert buckets == sorted(buckets)  # cumulative
    assert metric(after, "edgekit_inference_latency_seconds_bucket", le="+Inf") == 2
    assert metric(after, "edgekit_inference_latency_seconds_count") == 2
    assert 0 < metric(after, "edgekit_inference_latency_seconds_sum") < 10
    assert 0 <= metric(after, "edgekit_last_score") <= 1


def test_bundle_says_what_is_loaded_and_healthz_is_ok(server, detector):
    status, _, body = call(server, "GET", "/bundle")
    info = json.loads(body)
    manifest = detector.manifest
    assert status == 200 and info["fingerprint"] == detector.fingerprint
    assert (info["model"], info["target"], info["runtime"], info["precision"]) == (
        "patchcore",
        "x86",
        "openvino",
        manifest.precision,
    )
    assert info["schema_version"] == manifest.schema_version and info["runtime_version"]
    assert info["input"]["width"] == info["input"]["height"] == 256 and info["input"]["color"] == "rgb"
    assert info["thresholds"]["score_threshold"] == 0.5
    assert info["thresholds"]["image_threshold"] == manifest.decision.image_threshold
    assert call(server, "GET", "/healthz")[2] == b'{"status":"ok"}\n'


def test_page_and_api_modules_do_not_import_torch():
    code = "import sys, edgekit.serve.http, edgekit.serve.monitor; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


# -- the monitor -----------------------------------------------------------------------------------


def test_monitor_keeps_bounded_buffers_small_thumbnails_and_encodes_only_on_request(detector, brick):
    normal = np.asarray(Image.open(images(brick, "good")[0]).convert("RGB"))
    defect = np.asarray(Image.open(images(brick, "scratch")[0]).convert("RGB"))
    big = np.ascontiguousarray(np.tile(defect, (4, 6, 1)))  # 1024x1536, like a camera frame
    predictions = {False: detector.predict(normal), True: detector.predict(defect)}
    monitor = Monitor(detector, history=50, latency_samples=100, thumbnails=3, thumbnail_px=96)
    assert monitor.snapshot()["last"] is None and monitor.frame_jpeg() is None
    for index in range(400):
        anomalous = index % 10 == 0
        frame = Frame(index=index, image=big if anomalous else normal, source="rtsp://user:pw@cam/1")
        prediction = predictions[anomalous]
        monitor.record(
            Scored(
                frame,
                prediction,
                make_event(frame, prediction, latency_s=0.002 * (1 + index % 5), bundle=detector.fingerprint),
            )
        )
    assert len(monitor._history) == 50 and len(monitor._latencies_ms) == 100 and len(monitor._recent) == 3
    assert all(max(a.image.shape[:2]) <= 96 for a in monitor._recent)
    assert all(a.jpeg is None for a in monitor._recent) and not monitor._frame_cache  # nothing encoded yet
    state = monitor.snapshot()
    assert state["frames"] == 400 and state["anomalies"] == 40 and len(state["history"]) == 50
    assert state["latency_ms"]["p50"] == pytest.approx(6.0) and state["latency_ms"]["p99"] == pytest.approx(10.0)
    assert state["fps"] > 0 and state["last"]["source"] == "rtsp://cam/1"
    assert [a["frame"] for a in state["recent_anomalies"]] == [390, 380, 370]
    json.dumps(state)  # plain JSON types only
    with Image.open(io.BytesIO(monitor.frame_jpeg())) as shot:
        assert shot.format == "JPEG" and shot.size == (256, 256)
    seqs = [a["seq"] for a in state["recent_anomalies"]]
    with Image.open(io.BytesIO(monitor.thumbnail_jpeg(seqs[0]))) as thumb:
        assert max(thumb.size) <= 96
    assert monitor.thumbnail_jpeg(1) is None  # long gone from the ring
    assert public_source("rtsp://admin:secret@10.0.0.5:554/stream") == "rtsp://10.0.0.5:554/stream"
    assert public_source("/dev/video0") == "/dev/video0"


# -- the page in headless Chromium -----------------------------------------------------------------


def test_live_page_shows_scores_that_change_with_no_errors_and_no_outside_request(detector, brick, tmp_path):
    good, scratch = images(brick, "good")[0], images(brick, "scratch")[0]
    good_score, scratch_score = detector.predict(good).score, detector.predict(scratch).score
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with HttpService(detector, Monitor(detector), port=0, token=TOKEN) as service:
        origin = f"http://127.0.0.1:{service.port}"
        assert call(service, "POST", "/predict", good.read_bytes(), auth)[0] == 200
        with open_served_page(f"{origin}/?token={TOKEN}", width=1280, height=860, timeout=45) as page:
            score = "document.getElementById('score').textContent"
            first = page.wait_until(f"/^[0-9]/.test({score}) && {score}")
            page.wait_until("document.getElementById('frame').naturalWidth > 0")
            assert call(service, "POST", "/predict", scratch.read_bytes(), auth)[0] == 200
            second = page.wait_until(f"{score} !== {json.dumps(first)} && {score}")
            page.wait_until(
                "document.querySelectorAll('#thumbs img').length === 1 && "
                "[...document.querySelectorAll('#thumbs img')].every(i => i.naturalWidth > 0)"
            )
            page.wait_until(
                "document.getElementById('frame').src.includes('seq=2') && "
                "document.getElementById('frame').naturalWidth > 0"
            )
            shown = page.evaluate(
                "({verdict: document.getElementById('verdict').textContent, "
                "frames: document.getElementById('frames').textContent, "
                "status: document.getElementById('status').textContent, "
                "points: document.getElementById('series').getAttribute('d')})"
            )
            screenshot = page.screenshot()
        result = page.result
    (tmp_path / "page.png").write_bytes(screenshot)
    assert float(first) == pytest.approx(good_score, abs=5e-4)
    assert float(second) == pytest.approx(scratch_score, abs=5e-4) and float(second) != float(first)
    assert shown["verdict"] == "ANOMALY" and shown["frames"] == "2" and shown["status"] == "live"
    assert shown["points"].count("L") == 1  # two points on the score chart
    assert result.console_errors == []
    assert result.external_requests == []
    assert all(url.startswith(origin + "/") or url.startswith("data:") for url in result.requests)
    paths = {re.sub(r"\?.*", "", url[len(origin) :]) for url in result.requests if url.startswith(origin)}
    assert {"/", "/state", "/frame.jpg"} <= paths and any(p.startswith("/anomalies/") for p in paths)
    assert not is_blank(screenshot)


def test_served_page_harness_records_and_blocks_requests_that_leave_the_server(tmp_path):
    """The check above is only as good as the harness: an outside image must show up as external."""
    html = b'<!doctype html><img src="http://192.0.2.1/x.png"><img src="/local.png"><p id="p">ok</p>'

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html if self.path == "/" else b""
            self.send_response(200 if self.path == "/" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    local = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=local.serve_forever, daemon=True).start()
    try:
        origin = f"http://127.0.0.1:{local.server_address[1]}"
        with open_served_page(origin + "/", timeout=30) as page:
            assert page.wait_until("document.getElementById('p').textContent") == "ok"
            page.run_for(0.3)
        assert page.result.external_requests == ["http://192.0.2.1/x.png"]
        assert f"{origin}/local.png" in page.result.requests
    finally:
        local.shutdown()
        local.server_close()
