"""Live statistics of a running service: counters, rolling scores and latencies, the last frame.

The inference thread calls :meth:`Monitor.record` once per scored frame, so recording only counts,
appends to fixed-size ring buffers and keeps a reference to the frame: no image is encoded there.
JPEGs of the current frame and of the last anomalies are made when the page asks for them, on the
HTTP thread, and cached. Memory stays flat: the score history, the latency samples and the anomaly
thumbnails are bounded deques, and only the newest full frame is kept.
"""

from __future__ import annotations

import io
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from edgekit.runtime.detector import Detector
from edgekit.runtime.overlay import blend
from edgekit.serve.events import Scored
from edgekit.serve.sources import public_source

#: upper bounds (seconds) of the inference latency histogram: 5 ms on an x86 to seconds on a Pi
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
THRESHOLD = 0.5  # the bundle's threshold on normalised scores (see Detector.decide)


@dataclass
class _Anomaly:
    """One recent anomaly: a strided thumbnail of the frame and of its map, JPEG made on request."""

    seq: int
    info: dict[str, Any]
    image: np.ndarray
    anomaly_map: np.ndarray
    jpeg: Optional[bytes] = None


class Monitor:
    """Thread-safe live statistics of one running detector, for the page, /state and /metrics."""

    def __init__(
        self,
        detector: Detector,
        *,
        history: int = 240,
        latency_samples: int = 1000,
        thumbnails: int = 8,
        thumbnail_px: int = 160,
        fps_window_s: float = 5.0,
    ) -> None:
        manifest = detector.manifest
        self.bundle = {
            "fingerprint": detector.fingerprint,
            "model": manifest.model,
            "backbone": manifest.backbone,
            "target": manifest.target,
            "precision": manifest.precision,
            "runtime": manifest.runtime,
        }
        self.started = time.time()
        self._started_mono = time.monotonic()
        self._thumbnail_px = thumbnail_px
        self._fps_window_s = fps_window_s
        self._lock = threading.Lock()
        self._seq = 0
        self._frames = 0
        self._anomalies = 0
        self._dropped: dict[str, int] = {}
        self._requests: dict[tuple[str, int], int] = {}
        self._bucket_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)  # per bucket, not cumulative; last = +Inf
        self._latency_sum_s = 0.0
        self._history: deque[tuple[int, float, bool]] = deque(maxlen=history)
        self._latencies_ms: deque[float] = deque(maxlen=latency_samples)
        self._times: deque[float] = deque(maxlen=1024)  # monotonic record times, for frames/s
        self._recent: deque[_Anomaly] = deque(maxlen=thumbnails)
        self._last: Optional[tuple[int, Scored, dict[str, Any]]] = None
        self._frame_cache: dict[bool, tuple[int, bytes]] = {}
        self._source = ("", "")  # the last source string and its public form (no credentials)

    # -- called by the pipeline and the HTTP API -------------------------------------------------

    def record(self, item: Scored) -> None:
        """Count one scored frame. Cheap: counters, ring buffers, a reference (and a strided thumbnail
        copy for anomalies); no encoding."""
        event = item.event
        if event.source != self._source[0]:
            self._source = (event.source, public_source(event.source))
        info = {
            "frame": event.frame,
            "source": self._source[1],
            "name": event.name,
            "time": event.time,
            "score": event.score,
            "raw_score": event.raw_score,
            "is_anomalous": event.is_anomalous,
            "latency_ms": event.latency_ms,
        }
        thumb = None
        if event.is_anomalous:
            thumb = (
                _shrink(item.frame.image, self._thumbnail_px),
                _shrink(item.prediction.anomaly_map, self._thumbnail_px),
            )
        latency_s = event.latency_ms / 1e3
        bucket = next((i for i, bound in enumerate(LATENCY_BUCKETS_S) if latency_s <= bound), len(LATENCY_BUCKETS_S))
        with self._lock:
            self._seq += 1
            seq = self._seq
            info["seq"] = seq
            self._frames += 1
            self._anomalies += event.is_anomalous
            self._bucket_counts[bucket] += 1
            self._latency_sum_s += latency_s
            self._history.append((seq, event.score, event.is_anomalous))
            self._latencies_ms.append(event.latency_ms)
            self._times.append(time.monotonic())
            self._last = (seq, item, info)
            if thumb is not None:
                self._recent.append(_Anomaly(seq, info, *thumb))

    def count_dropped(self, reason: str, *, n: int = 1) -> None:
        """Count frames or events dropped for ``reason`` ("capture", "sink:jsonl", ...)."""
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + n

    def count_request(self, route: str, status: int) -> None:
        """Count one HTTP request by route ("/predict", "/state", ..., "other") and status code."""
        with self._lock:
            self._requests[(route, status)] = self._requests.get((route, status), 0) + 1

    # -- read by the page, /state, /metrics and the CLI's summary --------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything the live page shows, as plain JSON types."""
        now = time.monotonic()
        with self._lock:
            last = dict(self._last[2]) if self._last else None
            history = list(self._history)
            latencies = np.fromiter(self._latencies_ms, dtype=np.float64, count=len(self._latencies_ms))
            times = list(self._times)
            recent = [dict(anomaly.info) for anomaly in reversed(self._recent)]
            frames, anomalies, dropped = self._frames, self._anomalies, dict(self._dropped)
            requests = sum(self._requests.values())
        return {
            "bundle": dict(self.bundle),
            "uptime_s": round(now - self._started_mono, 3),
            "frames": frames,
            "anomalies": anomalies,
            "dropped": dropped,
            "dropped_total": sum(dropped.values()),
            "http_requests": requests,
            "fps": round(self._fps(times, now), 3),
            "latency_ms": {
                "p50": _percentile(latencies, 50),
                "p99": _percentile(latencies, 99),
                "samples": int(latencies.size),
            },
            "threshold": THRESHOLD,
            "last": last,
            "history": [[seq, round(score, 5), int(flag)] for seq, score, flag in history],
            "history_size": self._history.maxlen,
            "recent_anomalies": recent,
        }

    def prometheus(self) -> str:
        """The counters in Prometheus' text exposition format (version 0.0.4)."""
        with self._lock:
            frames, anomalies = self._frames, self._anomalies
            dropped, requests = sorted(self._dropped.items()), sorted(self._requests.items())
            buckets, latency_sum = list(self._bucket_counts), self._latency_sum_s
            last_score = self._last[2]["score"] if self._last else None
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.extend((f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"))

        family("edgekit_frames_total", "counter", "Frames and images scored (source frames and POST /predict).")
        lines.append(f"edgekit_frames_total {frames}")
        family("edgekit_anomalies_total", "counter", "Scored frames judged anomalous.")
        lines.append(f"edgekit_anomalies_total {anomalies}")
        family(
            "edgekit_dropped_frames_total",
            "counter",
            "Frames replaced before inference took them (capture) or items a slow sink could not take.",
        )
        lines.extend(f"edgekit_dropped_frames_total{{reason={_label(reason)}}} {count}" for reason, count in dropped)
        family("edgekit_http_requests_total", "counter", "HTTP requests answered, by route and status code.")
        lines.extend(
            f'edgekit_http_requests_total{{path={_label(route)},code="{status}"}} {count}'
            for (route, status), count in requests
        )
        family("edgekit_inference_latency_seconds", "histogram", "Detector.predict time per scored frame.")
        cumulative = 0
        for bound, count in zip((*LATENCY_BUCKETS_S, math.inf), buckets):
            cumulative += count
            lines.append(f'edgekit_inference_latency_seconds_bucket{{le="{_number(bound)}"}} {cumulative}')
        lines.append(f"edgekit_inference_latency_seconds_sum {_number(latency_sum)}")
        lines.append(f"edgekit_inference_latency_seconds_count {cumulative}")
        if last_score is not None:
            family("edgekit_last_score", "gauge", "Normalised score of the last scored frame (threshold 0.5).")
            lines.append(f"edgekit_last_score {_number(last_score)}")
        family("edgekit_bundle_info", "gauge", "The loaded bundle, as labels.")
        labels = ",".join(f"{key}={_label(str(value))}" for key, value in self.bundle.items())
        lines.append(f"edgekit_bundle_info{{{labels}}} 1")
        family("edgekit_process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch.")
        lines.append(f"edgekit_process_start_time_seconds {_number(round(PROCESS_START, 3))}")
        return "\n".join(lines) + "\n"

    def frame_jpeg(self, *, overlay: bool = True, max_side: int = 640, quality: int = 80) -> Optional[bytes]:
        """The newest frame (heat map blended over it unless ``overlay`` is False) as a JPEG, or None.

        Made on the caller's thread, at most ``max_side`` px, and cached until a newer frame comes.
        """
        with self._lock:
            if self._last is None:
                return None
            seq, item, _ = self._last
            cached = self._frame_cache.get(overlay)
            if cached is not None and cached[0] == seq:
                return cached[1]
        image = _fit(item.frame.image, max_side)
        if overlay:
            image = blend(image, item.prediction.anomaly_map)
        data = _jpeg(image, quality)
        with self._lock:
            self._frame_cache[overlay] = (seq, data)
        return data

    def thumbnail_jpeg(self, seq: int, *, quality: int = 80) -> Optional[bytes]:
        """The thumbnail (with its heat map) of recent anomaly ``seq`` as a JPEG; None once it is gone."""
        with self._lock:
            anomaly = next((a for a in self._recent if a.seq == seq), None)
        if anomaly is None:
            return None
        if anomaly.jpeg is None:  # a benign race: two callers may both encode it, once each
            anomaly.jpeg = _jpeg(blend(anomaly.image, anomaly.anomaly_map), quality)
        return anomaly.jpeg

    def _fps(self, times: list[float], now: float) -> float:
        if not times:
            return 0.0
        if len(times) == self._times.maxlen and times[0] > now - self._fps_window_s:
            return (len(times) - 1) / max(times[-1] - times[0], 1e-9)  # faster than the buffer covers
        window = min(self._fps_window_s, now - self._started_mono)
        return sum(1 for t in times if t > now - self._fps_window_s) / max(window, 1e-3)


def _shrink(array: np.ndarray, longest: int) -> np.ndarray:
    """A strided copy whose longer side is at most ``longest`` px: microseconds, no filtering."""
    step = max(1, -(-max(array.shape[:2]) // longest))
    return np.ascontiguousarray(array[::step, ::step])


def _fit(image: np.ndarray, longest: int) -> np.ndarray:
    """``image`` resized (Pillow, antialiased) so that its longer side is at most ``longest`` px."""
    from PIL import Image

    if max(image.shape[:2]) <= longest:
        return image
    picture = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    picture.thumbnail((longest, longest))
    out = np.asarray(picture)
    return out[:, :, None] if out.ndim == 2 else out


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _percentile(values: np.ndarray, q: float) -> Optional[float]:
    return round(float(np.percentile(values, q)), 3) if values.size else None


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _label(value: str) -> str:
    """A quoted Prometheus label value: backslash, double quote and newline escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _process_start_time() -> float:
    """When this process started (Linux: from /proc), else when this module was imported."""
    try:
        with open("/proc/self/stat") as stat:
            after_name = stat.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as system:
            boot = next(int(line.split()[1]) for line in system if line.startswith("btime "))
        return boot + int(after_name[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


PROCESS_START = _process_start_time()
