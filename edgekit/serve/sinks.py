"""Sinks on the device itself: JSON Lines events and saved frames, both size-capped.

Every write is whole or absent: an event line goes out in one ``write`` of an ``O_APPEND`` file,
and a saved frame is written beside its final name and renamed into place, so SIGTERM (or a power
cut) never leaves half a line or a half-written image. Both sinks cap what they keep, so an SD
card never fills: the event file is rotated once it passes ``max_bytes`` (one previous file is
kept), and saved anomalies are thinned to the newest ``keep`` items and ``keep_bytes``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Optional

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.serve.events import Event, Scored


class JsonlSink:
    """One JSON object per scored frame, to a file (appended) or to stdout (``path`` None or "-")."""

    name = "jsonl"

    def __init__(self, path: Optional[str | Path] = None, *, max_bytes: int = 100 * 2**20) -> None:
        self.path = None if path in (None, "-") else Path(path)
        self.max_bytes = max_bytes
        self._fd: Optional[int] = None
        if self.path is not None:
            if self.path.is_dir():
                raise EdgekitError(f"--events {self.path} is a folder; give a file name")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:
                raise EdgekitError(f"--events {self.path}: cannot write ({exc.strerror})") from None

    def handle(self, item: Scored) -> None:
        line = (json.dumps(item.event.to_json(), separators=(",", ":")) + "\n").encode()
        if self._fd is None:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
            return
        if os.fstat(self._fd).st_size + len(line) > self.max_bytes:
            self._rotate()
        os.write(self._fd, line)

    def _rotate(self) -> None:
        os.close(self._fd)
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


#: saved items are <stem>.png (the frame), <stem>_overlay.jpg (heat map) and <stem>.json (the event)
_STEM = re.compile(r"^(\d{8}T\d{6}\.\d{3}Z_f\d{8})(?:\.png|_overlay\.jpg|\.json)$")


class FrameStore:
    """Saves frames to a folder and keeps the newest within a count and a size cap.

    Default: each anomalous frame with its heat-map overlay and its event. ``every=N``: every Nth
    scored frame alone, as a lossless PNG, whatever its verdict: normal frames as the camera
    delivers them, for ``edgekit fit`` to re-fit the bundle on (camera compression moves scores).
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        keep: int = 100,
        keep_bytes: int = 500 * 2**20,
        every: Optional[int] = None,
        option: str = "--save-anomalies",
    ) -> None:
        if keep < 1 or keep_bytes < 1 or every is not None and every < 1:
            raise EdgekitError(f"{option}: the count and size caps must be positive")
        self.folder = Path(folder)
        self.name = "anomalies" if every is None else "frames"
        self.pixels = True
        self.keep, self.keep_bytes, self.every = keep, keep_bytes, every
        self._seen = 0
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgekitError(f"{option} {self.folder}: cannot create ({exc.strerror})") from None
        self._items: deque[tuple[str, int]] = deque()  # (stem, bytes), oldest first
        self._bytes = 0
        for stem in sorted({m.group(1) for m in map(_STEM.match, os.listdir(self.folder)) if m}):
            self._remember(stem)  # a restarted service keeps counting what an earlier run saved
        self._prune()

    def wants(self, event: Event) -> bool:
        """Anomalies, or every Nth frame: decided before the frame is queued (inference thread)."""
        self._seen += 1
        return event.is_anomalous if self.every is None else (self._seen - 1) % self.every == 0

    def handle(self, item: Scored) -> None:
        from PIL import Image

        from edgekit.runtime.overlay import blend

        stamp = item.event.time.replace("-", "").replace(":", "").replace("+0000", "Z")[:19] + "Z"
        stem = f"{stamp}_f{item.event.frame:08d}"
        image = item.frame.image if item.frame.image.ndim == 3 else item.frame.image[:, :, None]
        self._write(
            f"{stem}.png",
            lambda f: Image.fromarray(np.squeeze(image, axis=2) if image.shape[2] == 1 else image).save(
                f, format="PNG"
            ),
        )
        if self.every is None:
            overlay = blend(image, item.prediction.anomaly_map)
            self._write(f"{stem}_overlay.jpg", lambda f: Image.fromarray(overlay).save(f, format="JPEG", quality=85))
            self._write(f"{stem}.json", lambda f: f.write(json.dumps(item.event.to_json(), indent=1).encode()))
        self._remember(stem)
        self._prune()

    def _write(self, name: str, write) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
            os.replace(tmp, self.folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _files(self, stem: str) -> list[Path]:
        return [self.folder / f"{stem}{suffix}" for suffix in (".png", "_overlay.jpg", ".json")]

    def _remember(self, stem: str) -> None:
        size = sum(p.stat().st_size for p in self._files(stem) if p.exists())
        self._items.append((stem, size))
        self._bytes += size

    def _prune(self) -> None:
        while self._items and (len(self._items) > self.keep or self._bytes > self.keep_bytes):
            stem, size = self._items.popleft()
            self._bytes -= size
            for path in self._files(stem):
                path.unlink(missing_ok=True)

    def close(self) -> None:
        pass
