"""The local page and HTTP API of ``edgekit run``, on the standard library's ``ThreadingHTTPServer``.

Why the standard library: nothing more to install on a camera, and the load is tiny (one page
polling twice a second, now and then a ``POST /predict``), which a thread per connection serves
well. What a framework would add is done here by hand and tested: a body cap checked before
reading, one-line JSON errors, bearer tokens, a cap on connections and on concurrent predictions.

Routes (all but ``/healthz`` need ``Authorization: Bearer <token>`` when a token is set; GET
routes also take ``?token=``, so that the page and its images work when opened as ``/?token=T``):

- ``GET /``: the live page; ``GET /state``: what it shows, as JSON (``Monitor.snapshot``);
  ``GET /frame.jpg`` (``?overlay=0``: without the heat map); ``GET /anomalies/<seq>.jpg``
- ``POST /predict``: the body is an image file → ``{score, raw_score, is_anomalous, latency_ms,
  bundle, width, height}``; ``?overlay=1`` adds ``overlay_png_base64``
- ``GET /healthz``, ``GET /metrics`` (Prometheus text), ``GET /bundle`` (what is loaded)
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import io
import ipaddress
import itertools
import json
import re
import socket
import socketserver
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlsplit

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.detector import Detector
from edgekit.runtime.overlay import blend
from edgekit.serve.events import Frame, Scored, log, make_event
from edgekit.serve.monitor import THRESHOLD, Monitor

#: (method, path) → handler method name; /anomalies/<seq>.jpg is matched by _ANOMALY_PATH
_ROUTES = {
    ("GET", "/"): "_page",
    ("GET", "/state"): "_state",
    ("GET", "/frame.jpg"): "_frame",
    ("GET", "/healthz"): "_healthz",
    ("GET", "/metrics"): "_metrics",
    ("GET", "/bundle"): "_bundle",
    ("POST", "/predict"): "_predict",
}
_ANOMALY_PATH = re.compile(r"/anomalies/(\d{1,18})\.jpg")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class HttpError(Exception):
    """An answer other than 200: its status and the one line that explains it."""

    def __init__(self, status: int, message: str, *, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class HttpService:
    """The page and the API on their own threads; predictions through the shared Detector.

    ``port=0`` binds a free port (``port`` tells which once started). ``max_concurrent`` bounds the
    predictions (and so the decoded images) in flight; ``max_connections`` the open connections.
    ``on_scored``, if given, also receives every ``POST /predict`` result (e.g. to feed the sinks).
    """

    def __init__(
        self,
        detector: Detector,
        monitor: Monitor,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        token: Optional[str] = None,
        max_body_bytes: int = 20 * 2**20,
        max_pixels: int = 50_000_000,
        max_concurrent: int = 4,
        max_connections: int = 16,
        timeout_s: float = 30.0,
        on_scored: Optional[Callable[[Scored], None]] = None,
    ) -> None:
        if token is not None and not token.strip():
            raise EdgekitError("the token must not be empty")
        self.detector, self.monitor = detector, monitor
        self.host, self._port, self.token = host, port, token
        self.max_body_bytes, self.max_pixels = max_body_bytes, max_pixels
        self.max_connections, self.timeout_s, self.on_scored = max_connections, timeout_s, on_scored
        self.fingerprint = detector.fingerprint
        self.bundle_info = bundle_info(detector)
        self.loopback_only = _is_loopback(host)
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._frame_index = itertools.count()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        """The bound port once started (the asked one before)."""
        return self._server.server_address[1] if self._server is not None else self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        """Bind and serve on a background thread; a bind failure is one EdgekitError line."""
        if self._server is not None:
            return
        try:
            self._server = _Server((self.host, self._port), self)
        except OSError as exc:
            raise EdgekitError(f"cannot serve on {self.host}:{self._port}: {exc.strerror or exc}") from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="edgekit-http", daemon=True
        )
        self._thread.start()

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop accepting, let requests in progress finish (at most ``timeout`` s), close the socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        if self._thread is not None:
            self._thread.join()
        server.close_connections(timeout)
        server.server_close()

    def __enter__(self) -> "HttpService":
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def predict(self, body: bytes, *, overlay: bool = False, received_mono: float = 0.0) -> dict[str, Any]:
        """Score one uploaded image file; record it in the monitor (source "http"); the JSON reply."""
        received = time.time()
        with self._slots:
            image = decode_image(body, channels=self.detector.manifest.input.channels, max_pixels=self.max_pixels)
            started = time.perf_counter()
            prediction = self.detector.predict(image)
            latency_s = time.perf_counter() - started
        frame = Frame(
            index=next(self._frame_index), image=image, source="http", captured=received, captured_mono=received_mono
        )
        item = Scored(frame, prediction, make_event(frame, prediction, latency_s=latency_s, bundle=self.fingerprint))
        self.monitor.record(item)
        if self.on_scored is not None:
            self.on_scored(item)
        reply = {
            "score": prediction.score,
            "raw_score": prediction.raw_score,
            "is_anomalous": prediction.is_anomalous,
            "latency_ms": round(latency_s * 1e3, 3),
            "bundle": self.fingerprint,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
        }
        if overlay:
            from PIL import Image

            png = io.BytesIO()
            Image.fromarray(blend(image, prediction.anomaly_map)).save(png, format="PNG")
            reply["overlay_png_base64"] = base64.b64encode(png.getvalue()).decode("ascii")
        return reply


def decode_image(data: bytes, *, channels: int, max_pixels: int) -> np.ndarray:
    """Untrusted image-file bytes → HxWxC uint8 (RGB, or grey for ``channels=1``), EXIF-rotated.

    preprocess's own checks, mapped to statuses: the size is read from the header and refused (413)
    before any pixel is decoded; bytes Pillow cannot identify are 415; a truncated, corrupt or
    too small image is 422.
    """
    from edgekit.preprocess import ImageRejected
    from edgekit.preprocess import decode_image as decode

    try:
        return decode(data, channels, label="the image", max_pixels=max_pixels)
    except ImageRejected as exc:
        raise HttpError(_IMAGE_STATUS.get(exc.reason, 422), str(exc)) from None
    except EdgekitError as exc:
        raise HttpError(422, str(exc)) from None


#: preprocess.ImageRejected.reason -> HTTP status
_IMAGE_STATUS = {"too-large": 413, "unreadable": 415, "too-small": 422, "corrupt": 422}


def bundle_info(detector: Detector) -> dict[str, Any]:
    """What ``GET /bundle`` says about the loaded bundle: model, target, runtime, input, thresholds."""
    manifest, spec, decision = detector.manifest, detector.manifest.input, detector.manifest.decision
    return {
        "fingerprint": detector.fingerprint,
        "schema_version": manifest.schema_version,
        "edgekit_version": manifest.edgekit_version,
        "model": manifest.model,
        "backbone": manifest.backbone,
        "target": manifest.target,
        "runtime": manifest.runtime,
        "runtime_version": getattr(detector.backend, "version", None),
        "device": manifest.device,
        "precision": manifest.precision,
        "format": manifest.network.format,
        "head": manifest.head.kind,
        "input": {
            "width": spec.width,
            "height": spec.height,
            "channels": spec.channels,
            "color": "rgb" if spec.channels == 3 else "grey",
            "resize": spec.resize,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "layout": spec.layout,
            "fit": spec.fit,
            "roi": list(spec.roi),
            "tiles": list(spec.tiles),
            "tile_overlap": spec.tile_overlap,
            "map_size": list(spec.map_size),
        },
        "thresholds": {
            "score_threshold": THRESHOLD,
            "image_threshold": decision.image_threshold,
            "image_center": decision.image_center,
            "pixel_threshold": decision.pixel_threshold,
            "pixel_center": decision.pixel_center,
            "method": decision.method,
            "fitted_on": decision.fitted_on,
        },
    }


@functools.lru_cache(maxsize=1)
def page() -> tuple[bytes, str]:
    """The page's HTML and a Content-Security-Policy that allows its own inline script and style
    (by hash) and requests to this server only: a browser refuses anything else."""
    html = Path(__file__).with_name("page.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'" for body in bodies
        )

    policy = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html.encode("utf-8"), policy


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name part of a Host header: "127.0.0.1:8080" → "127.0.0.1", "[::1]:80" → "::1"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _flag(query: dict[str, list[str]], name: str, default: bool) -> bool:
    values = query.get(name)
    if not values:
        return default
    if values[-1].lower() in _TRUE:
        return True
    if values[-1].lower() in _FALSE:
        return False
    raise HttpError(400, f"?{name}= takes 1 or 0, not {values[-1][:20]!r}")


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode("utf-8") + b"\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for the page's polling
    server: "_Server"

    def setup(self) -> None:
        self.timeout = self.server.service.timeout_s  # a silent client cannot hold a thread for ever
        self._status: Optional[int] = None  # per request: the status sent, once sending began
        self._route = "other"
        self._body_done = False
        self._linger = False
        super().setup()

    def finish(self) -> None:
        super().finish()
        if self._linger:
            self._discard_unread_body()

    def version_string(self) -> str:
        return "edgekit"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        """Silent: the page polls twice a second; failures are logged where they are handled."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":  # no status line, no headers: nothing this API can answer
            self.send_error(400, "HTTP/0.9 requests are not served; use HTTP/1.0 or 1.1")
            return False
        return True

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """http.server's own refusals (bad request line, unknown method, ...) as one-line JSON too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # what http.server assumes of a line it cannot parse
            self.request_version = "HTTP/1.0"  # so that the status line and headers are sent
        self._reply_json(code, {"error": message or HTTPStatus(code).phrase})

    def handle_expect_100(self) -> bool:
        """Refuse an upload that would be refused anyway before the client sends its body."""
        self._route, handler = self._resolve("POST")
        if self.command == "POST" and handler == "_predict":
            try:
                self._check_access(self._route, parse_qs(urlsplit(self.path).query))
                self._body_length()
            except HttpError as error:
                self.close_connection = self._linger = True  # in case the client sends the body anyway
                self._reply_json(error.status, {"error": error.message}, error.headers)
                return False
        return super().handle_expect_100()

    def _resolve(self, method: str) -> tuple[str, Optional[str]]:
        """(route label for /metrics, handler name or None) for this request's path."""
        path = urlsplit(self.path).path
        if _ANOMALY_PATH.fullmatch(path):
            return "/anomalies", "_anomaly" if method == "GET" else None
        if any(p == path for _, p in _ROUTES):
            return path, _ROUTES.get((method, path))
        return "other", None

    def _dispatch(self, method: str) -> None:
        received = time.perf_counter()
        self._status, self._body_done = None, False
        self._route, handler = self._resolve(method)
        try:
            url = urlsplit(self.path)
            try:
                query = parse_qs(url.query, keep_blank_values=True, max_num_fields=16)
            except ValueError:
                raise HttpError(400, "too many query parameters") from None
            self._check_access(self._route, query)
            if self._route == "other":
                raise HttpError(404, f"no such page: {url.path[:80]} (try /, /predict, /metrics, /bundle)")
            if handler is None:
                allowed = ", ".join(sorted(m for m, p in _ROUTES if p == self._route)) or "GET"
                raise HttpError(
                    405, f"{method} is not allowed on {self._route}; use {allowed}", headers={"Allow": allowed}
                )
            getattr(self, handler)(query, received)
        except HttpError as error:
            self._fail(error.status, error.message, error.headers)
        except EdgekitError as error:  # e.g. an image the detector refuses
            self._fail(422, str(error))
        except (ConnectionError, TimeoutError):  # the client went away or stalled: nobody to answer
            self.close_connection = True
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            log(
                f"http {method} {self._route}: {type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"
            )
            self._fail(500, f"internal error ({type(exc).__name__}); the service log has the details")
        finally:
            self._route = "other"

    def _check_access(self, route: str, query: dict[str, list[str]]) -> None:
        service = self.server.service
        host = self.headers.get("Host")
        if service.loopback_only and host is not None and not _is_loopback(_host_name(host)):
            raise HttpError(403, "this service is bound to loopback: use http://127.0.0.1 or localhost")
        if service.token is None or route == "/healthz":
            return
        expected = service.token.encode()
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
            return
        if self.command == "GET" and any(
            hmac.compare_digest(value.encode(), expected) for value in query.get("token", [])[:1]
        ):
            return
        raise HttpError(
            401,
            "a valid token is needed: send 'Authorization: Bearer <token>' (or open /?token=<token>)",
            headers={"WWW-Authenticate": 'Bearer realm="edgekit"'},
        )

    def _body_length(self) -> int:
        """The request's Content-Length, refused (411/400/413) before a byte of the body is read."""
        if self.headers.get("Transfer-Encoding") is not None:
            raise HttpError(411, "send the image with a Content-Length header (chunked bodies are not accepted)")
        values = [value.strip() for value in self.headers.get_all("Content-Length") or []]
        if not values:
            raise HttpError(411, "a Content-Length header is required")
        if len(set(values)) != 1 or not re.fullmatch(r"\d{1,15}", values[0]):
            raise HttpError(400, f"invalid Content-Length: {values[0][:30]!r}")
        length = int(values[0])
        limit = self.server.service.max_body_bytes
        if length > limit:
            raise HttpError(413, f"the body is {length} bytes; the limit is {limit} bytes")
        if length == 0:
            raise HttpError(400, "the body is empty: send the image file's bytes")
        return length

    # -- routes ----------------------------------------------------------------------------------

    def _page(self, query: dict, received: float) -> None:
        html, policy = page()
        self._reply(
            200,
            html,
            "text/html; charset=utf-8",
            {"Content-Security-Policy": policy, "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"},
        )

    def _state(self, query: dict, received: float) -> None:
        self._reply_json(200, self.server.service.monitor.snapshot())

    def _frame(self, query: dict, received: float) -> None:
        data = self.server.service.monitor.frame_jpeg(overlay=_flag(query, "overlay", True))
        if data is None:
            raise HttpError(404, "no frame has been scored yet")
        self._reply(200, data, "image/jpeg")

    def _anomaly(self, query: dict, received: float) -> None:
        seq = int(_ANOMALY_PATH.fullmatch(urlsplit(self.path).path).group(1))
        data = self.server.service.monitor.thumbnail_jpeg(seq)
        if data is None:
            raise HttpError(404, f"anomaly {seq} is no longer among the recent ones")
        self._reply(200, data, "image/jpeg")

    def _healthz(self, query: dict, received: float) -> None:
        self._reply_json(200, {"status": "ok"})

    def _metrics(self, query: dict, received: float) -> None:
        text = self.server.service.monitor.prometheus()
        self._reply(200, text.encode("utf-8"), "text/plain; version=0.0.4; charset=utf-8")

    def _bundle(self, query: dict, received: float) -> None:
        self._reply_json(200, self.server.service.bundle_info)

    def _predict(self, query: dict, received: float) -> None:
        overlay = _flag(query, "overlay", False)
        length = self._body_length()
        body = self.rfile.read(length)
        if len(body) < length:
            raise HttpError(400, f"the body ended after {len(body)} of {length} bytes")
        self._body_done = True
        self._reply_json(200, self.server.service.predict(body, overlay=overlay, received_mono=received))

    # -- answers ---------------------------------------------------------------------------------

    def _discard_unread_body(self, *, seconds: float = 2.0, limit: int = 64 * 2**20) -> None:
        """After refusing a body unread: send FIN, then read and drop what the client still sends
        for a moment, so that closing does not reset the connection before it read our answer."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.5)
            deadline, dropped = time.monotonic() + seconds, 0
            while time.monotonic() < deadline and dropped < limit:
                chunk = self.connection.recv(1 << 16)
                if not chunk:
                    return
                dropped += len(chunk)
        except OSError:
            pass

    def _fail(self, status: int, message: str, headers: Optional[dict[str, str]] = None) -> None:
        if self._status is not None:  # the answer had begun: all we can do is hang up
            self.close_connection = True
            return
        if self.command == "POST" and not self._body_done:
            # An unread body would be taken for the next request: answer, then hang up (see finish).
            self.close_connection = self._linger = True
        self._reply_json(status, {"error": message}, headers)

    def _reply_json(self, status: int, payload: Any, headers: Optional[dict[str, str]] = None) -> None:
        self._reply(status, _json_bytes(payload), "application/json", headers)

    def _reply(self, status: int, body: bytes, content_type: str, headers: Optional[dict[str, str]] = None) -> None:
        self._status = status
        self.server.service.monitor.count_request(self._route, status)  # before the client can see the answer
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and status >= 200 and status not in (204, 304):
            self.wfile.write(body)
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``service.max_connections`` of them, all closed by ``stop``."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: HttpService) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.service = service
        self._lock = threading.Lock()
        self._live: dict[socket.socket, threading.Thread] = {}
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would look up the host's FQDN (DNS)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        with self._lock:
            full = len(self._live) >= self.service.max_connections
            if not full:
                thread = threading.Thread(
                    target=self._serve, args=(request, client_address), name="edgekit-http-connection", daemon=True
                )
                self._live[request] = thread
        if full:
            self._refuse(request)
            return
        thread.start()

    def _serve(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._live.pop(request, None)

    def _refuse(self, request: socket.socket) -> None:
        body = _json_bytes({"error": f"too many connections (limit {self.service.max_connections}); retry later"})
        head = (
            f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        ).encode()
        self.service.monitor.count_request("other", 503)
        try:
            request.settimeout(1.0)
            request.sendall(head + body)
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line instead of socketserver's traceback on stderr."""
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError)):
            log(f"http connection from {client_address[0]}: {type(error).__name__}: {error}")

    def close_connections(self, timeout: float) -> None:
        """End idle keep-alive connections (their read sees EOF) and wait for the busy ones."""
        with self._lock:
            live = dict(self._live)
        for connection in live:
            try:
                connection.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for thread in live.values():
            thread.join(max(0.0, deadline - time.monotonic()))
