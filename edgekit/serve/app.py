"""``edgekit run`` put together: detector, source, sinks, page/API, signals, and the final summary.

Every option is checked and every sink opened before the first frame, so a wrong address or an
unwritable folder is one error line at start, not a failure an hour later. SIGINT and SIGTERM set
one stop flag: the current frame finishes, sinks flush, the process exits 0.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgekit.errors import EdgekitError
from edgekit.serve.events import log

DEFAULT_SERVE = "127.0.0.1:8080"


@dataclass(frozen=True)
class RunConfig:
    """What the ``run`` command was asked to do (the CLI's options, validated here)."""

    bundle: Path
    source: Optional[str] = None
    watch: bool = False
    fps: Optional[float] = None
    max_frames: Optional[int] = None
    duration: Optional[float] = None
    events: Optional[str] = "-"  # a JSONL file, "-" for stdout, None for none
    events_max_mb: float = 100.0
    save_anomalies: Optional[Path] = None
    keep: int = 100
    keep_mb: float = 500.0
    save_frames: Optional[Path] = None
    save_every: int = 10
    save_frames_keep: int = 500
    mqtt: Optional[str] = None  # HOST[:PORT]
    mqtt_topic: str = "edgekit"
    mqtt_user: Optional[str] = None
    mqtt_tls: bool = False
    heartbeat: float = 30.0
    webhook: Optional[str] = None
    serve: Optional[str] = None  # HOST:PORT
    token: Optional[str] = None
    threads: Optional[int] = None  # the Detector's thread budget (None: the target's; 0: every usable core)
    mode: Optional[str] = None  # "latency" or "throughput" (None: the target's)
    trusted_keys: tuple[Path, ...] = ()  # --require-signature: public keys; empty = no signature needed

    def __post_init__(self) -> None:
        for name in (
            "fps",
            "max_frames",
            "duration",
            "events_max_mb",
            "keep",
            "keep_mb",
            "save_every",
            "save_frames_keep",
            "heartbeat",
        ):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise EdgekitError(f"--{name.replace('_', '-')} must be positive, not {value}")
        if self.source is None and self.serve is None:
            raise EdgekitError("give --source SRC, --serve [HOST:PORT], or both")
        if self.token is not None and not self.token.strip():
            raise EdgekitError("--token is empty")


def parse_address(text: str, *, default_port: int, what: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (IPv6 as ``[::1]:PORT``) → (host, port)."""
    host, port = text.strip(), default_port
    if host.startswith("["):
        inside, _, rest = host[1:].partition("]")
        host = inside
        if rest.startswith(":"):
            port = _port(rest[1:], what)
    elif host.count(":") == 1:
        host, port_text = host.split(":")
        port = _port(port_text, what)
    if not host:
        raise EdgekitError(f"{what} {text!r}: no host")
    return host, port


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise EdgekitError(f"{what}: {text!r} is not a port number")
    return int(text)


def build_sinks(config: RunConfig, *, fingerprint: str) -> list:
    """The sinks the options ask for, each opened (or its address checked) now."""
    sinks = []
    if config.events is not None:
        from edgekit.serve.sinks import JsonlSink

        sinks.append(JsonlSink(config.events, max_bytes=int(config.events_max_mb * 2**20)))
    if config.save_anomalies is not None:
        from edgekit.serve.sinks import FrameStore

        sinks.append(FrameStore(config.save_anomalies, keep=config.keep, keep_bytes=int(config.keep_mb * 2**20)))
    if config.save_frames is not None:
        from edgekit.serve.sinks import FrameStore

        sinks.append(
            FrameStore(
                config.save_frames,
                keep=config.save_frames_keep,
                keep_bytes=2**62,
                every=config.save_every,
                option="--save-frames",
            )
        )
    if config.mqtt is not None:
        from edgekit.serve.mqtt import MqttSink

        host, port = parse_address(config.mqtt, default_port=8883 if config.mqtt_tls else 1883, what="--mqtt")
        password = os.environ.get("EDGEKIT_MQTT_PASSWORD") if config.mqtt_user is not None else None
        sinks.append(
            MqttSink(
                host,
                port,
                topic=config.mqtt_topic,
                heartbeat_s=config.heartbeat,
                bundle=fingerprint,
                username=config.mqtt_user,
                password=password,
                tls=config.mqtt_tls,
            )
        )
    if config.webhook is not None:
        from edgekit.serve.webhook import WebhookSink

        sinks.append(WebhookSink(config.webhook))
    return sinks


def run_service(config: RunConfig) -> int:
    """Run until the source ends, a limit is reached, or a signal arrives. Returns the exit code."""
    from edgekit.runtime.detector import load
    from edgekit.serve.pipeline import Pipeline
    from edgekit.serve.sources import describe, open_source

    detector = load(
        config.bundle, threads=config.threads, mode=config.mode, trusted_keys=list(config.trusted_keys) or None
    )
    source = (
        None
        if config.source is None
        else open_source(config.source, watch=config.watch, channels=detector.manifest.input.channels)
    )
    sinks = build_sinks(config, fingerprint=detector.fingerprint)
    monitor = server = None
    if config.serve is not None:
        from edgekit.serve.http import HttpService
        from edgekit.serve.monitor import Monitor

        host, port = parse_address(config.serve, default_port=8080, what="--serve")
        monitor = Monitor(detector)
        server = HttpService(detector, monitor, host=host, port=port, token=config.token)
        server.start()
        log(
            f"page and API on http://{host if ':' not in host else f'[{host}]'}:{server.port}/"
            + (" (bearer token required)" if config.token else "")
        )
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    m = detector.manifest
    log(
        f"{m.model} {m.target}/{m.precision} on {detector.backend.name} (bundle {detector.fingerprint})"
        + (f", {describe(source)}" if source is not None else ", no source: API only")
    )
    try:
        if source is None:
            stop.wait(config.duration)
            return 0
        summary = Pipeline(
            detector,
            source,
            sinks,
            monitor=monitor,
            fps=config.fps,
            max_frames=config.max_frames,
            duration=config.duration,
        ).run(stop)
        dropped_sinks = ", ".join(f"{name} {n}" for name, n in summary.sink_dropped.items() if n)
        log(
            f"{summary.reason}: {summary.frames} frames scored, {summary.anomalies} anomalous, "
            f"{summary.dropped} dropped, {summary.failed} unreadable in {summary.seconds:.1f} s"
            + (f"; sinks behind: {dropped_sinks}" if dropped_sinks else "")
        )
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.stop()
