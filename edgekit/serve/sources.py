"""Frame sources for ``edgekit run``: cameras, video files, streams, image folders and globs.

``open_source(text)`` reads what the user typed. A source yields :class:`Frame` objects, always RGB
(or grey) uint8: OpenCV's BGR frames are converted here, once. A *live* source (camera, stream)
produces frames whether or not anyone takes them, so the pipeline keeps only the latest; a file
source (video file, folder, glob) is read at the pace of inference and no frame is skipped.
Cameras and streams that fail mid-run are reopened with back-off; one that cannot be opened at
start is an error, so a wrong address is said at once.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Union
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.serve.events import Frame, log

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
RECONNECT_FIRST_S = 0.5  # first wait after a camera or stream is lost; doubled up to the cap
RECONNECT_MAX_S = 30.0
STREAM_TIMEOUT_MS = 5000  # OpenCV/FFmpeg open and read time-outs: a stalled stream counts as lost
POLL_S = 0.25  # how often a watched folder is listed


def _cv2():
    # OpenCV and FFmpeg would print their own warnings on every failed (re)connect; the lines that
    # matter (lost, reconnected) are ours. A user's own setting of these variables wins.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    try:
        import cv2
    except ImportError:
        raise EdgekitError(
            "cameras, video files and streams need OpenCV: pip install 'edgekit-anomaly[camera]'"
        ) from None
    return cv2


def public_source(source: str) -> str:
    """``source`` without credentials (rtsp://user:secret@cam/x → rtsp://cam/x): what events and logs show."""
    try:
        parts = urlsplit(source)
    except ValueError:
        return source
    if not parts.scheme or "@" not in parts.netloc:
        return source
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _has_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


@dataclass
class VideoSource:
    """A camera (index or /dev/videoN), a stream URL or a video file, read with OpenCV."""

    target: Union[int, str]
    kind: str  # "camera", "stream" or "video"
    text: str  # what the user gave, without credentials (events and logs show it)
    reconnect_first_s: float = RECONNECT_FIRST_S
    reconnect_max_s: float = RECONNECT_MAX_S
    _capture: object = field(default=None, init=False, repr=False)

    @property
    def live(self) -> bool:
        return self.kind != "video"

    def _open(self):
        cv2 = _cv2()
        if self.kind == "stream":
            capture = cv2.VideoCapture(
                self.target,
                cv2.CAP_FFMPEG,
                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS],
            )
        else:
            capture = cv2.VideoCapture(self.target)
        if self.kind == "camera":
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's queue would deliver stale frames
        if not capture.isOpened():
            capture.release()
            return None
        return capture

    def open(self) -> None:
        if self.kind == "video" and not Path(self.text).is_file():
            raise EdgekitError(f"{self.text}: no such video file")
        self._capture = self._open()
        if self._capture is None:
            what = {"camera": "camera", "stream": "stream", "video": "video file"}[self.kind]
            raise EdgekitError(f"{self.text}: cannot open this {what} with OpenCV")

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        cv2 = _cv2()
        capture, index, wait = self._capture, 0, self.reconnect_first_s
        try:
            while not stop.is_set():
                ok, pixels = capture.read() if capture is not None else (False, None)
                if ok and pixels is not None:
                    wait = self.reconnect_first_s
                    yield Frame(
                        index=index,
                        image=_from_opencv(cv2, pixels),
                        source=self.text,
                        captured=time.time(),
                        captured_mono=time.perf_counter(),
                    )
                    index += 1
                    continue
                if not self.live:
                    return  # end of the video file
                if capture is not None:
                    capture.release()
                    capture = None
                    log(f"{self.kind} {self.text} lost after frame {index - 1}; reconnecting in {wait:.1f} s")
                if stop.wait(wait):
                    return
                capture = self._open()
                if capture is not None:
                    log(f"{self.kind} {self.text} reconnected")
                else:
                    log(
                        f"{self.kind} {self.text} still unavailable; next try in {min(wait * 2, self.reconnect_max_s):.1f} s"
                    )
                wait = min(wait * 2, self.reconnect_max_s)
        finally:
            if capture is not None:
                capture.release()
            self._capture = None


@dataclass
class PiCameraSource:
    """A Raspberry Pi camera module through picamera2 (libcamera), when picamera2 is importable.

    picamera2 comes with Raspberry Pi OS (apt's python3-picamera2), not from PyPI, so a venv sees
    it only when made with ``--system-site-packages``. Its "BGR888" format is [R, G, B] in memory,
    so frames need no conversion. A camera error ends the run (systemd restarts the service).
    """

    camera: int
    text: str
    live = True
    _picam: object = field(default=None, init=False, repr=False)

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise EdgekitError(
                f"{self.text}: picamera2 is not importable here (on Raspberry Pi OS: "
                f"apt install python3-picamera2, and make the venv with --system-site-packages)"
            ) from None
        try:
            picam = Picamera2(self.camera)
            picam.configure(picam.create_video_configuration(main={"format": "BGR888"}))
            picam.start()
        except Exception as exc:  # libcamera's errors are RuntimeError, IndexError (no such camera), ...
            raise EdgekitError(f"{self.text}: cannot start the camera ({type(exc).__name__}: {exc})") from None
        self._picam = picam

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        picam, index = self._picam, 0
        try:
            while not stop.is_set():
                pixels = np.asarray(picam.capture_array("main"))[:, :, :3]
                yield Frame(
                    index=index,
                    image=np.ascontiguousarray(pixels),
                    source=self.text,
                    captured=time.time(),
                    captured_mono=time.perf_counter(),
                )
                index += 1
        finally:
            picam.stop()
            picam.close()
            self._picam = None


def _from_opencv(cv2, pixels: np.ndarray) -> np.ndarray:
    """An OpenCV frame (BGR, BGRA or grey) as RGB or grey uint8; a grey model's luma is taken later
    by the one pre-processing, as for every other image."""
    if pixels.dtype != np.uint8:
        pixels = cv2.convertScaleAbs(pixels)
    if pixels.ndim == 2:
        return pixels
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB if pixels.shape[2] == 3 else cv2.COLOR_BGRA2RGB)


@dataclass
class FileSource:
    """Image files from a folder or a glob, in name order; with ``watch``, also files that appear later.

    A watched file is taken once its size and modification time have stayed the same for one poll,
    so a file still being written is not read half-way, and it is taken again whenever it changes
    (a camera that rewrites ``latest.jpg``). Memory stays flat: a name is remembered only while the
    file exists.
    """

    text: str
    list_files: Callable[[], list[str]]
    watch: bool = False
    channels: int = 3
    poll_s: float = POLL_S
    live = False

    def open(self) -> None:
        if not self.watch and not self.list_files():
            raise EdgekitError(f"{self.text}: no image files")

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        from edgekit.preprocess import read_image

        taken: dict[str, tuple[int, int]] = {}  # name -> (size, mtime) when it was last taken
        pending: dict[str, tuple[int, int]] = {}  # name -> (size, mtime) at the previous poll
        index = 0
        while not stop.is_set():
            present = self.list_files()
            for name in present:
                if stop.is_set():
                    break
                if self.watch:
                    try:
                        info = os.stat(name)
                    except OSError:
                        continue
                    signature = (info.st_size, info.st_mtime_ns)
                    if taken.get(name) == signature:
                        continue
                    if pending.get(name) != signature or info.st_size == 0:
                        pending[name] = signature  # new or still changing: look again next poll
                        continue
                    taken[name] = signature
                elif name in taken:
                    continue
                else:
                    taken[name] = (0, 0)
                pending.pop(name, None)
                try:
                    image = read_image(name, self.channels)
                except EdgekitError as exc:
                    log(f"skipped {exc}" + ("; it is read again if it changes" if self.watch else ""))
                    continue
                yield Frame(
                    index=index,
                    image=image,
                    source=self.text,
                    name=name,
                    captured=time.time(),
                    captured_mono=time.perf_counter(),
                )
                index += 1
            if not self.watch:
                return
            names = set(present)
            for remembered in (taken, pending):
                for name in [n for n in remembered if n not in names]:
                    del remembered[name]
            stop.wait(self.poll_s)


def _folder_lister(folder: Path) -> Callable[[], list[str]]:
    def list_files() -> list[str]:
        try:
            with os.scandir(folder) as entries:
                return sorted(
                    e.path
                    for e in entries
                    if e.is_file()
                    and not e.name.startswith(".")
                    and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
                )
        except OSError:
            return []

    return list_files


def _glob_lister(pattern: str) -> Callable[[], list[str]]:
    def list_files() -> list[str]:
        return sorted(
            p
            for p in glob.glob(pattern, recursive=True)
            if os.path.isfile(p) and os.path.splitext(p)[1].lower() in IMAGE_SUFFIXES
        )

    return list_files


Source = Union[VideoSource, FileSource, PiCameraSource]


def open_source(text: str, *, watch: bool = False, channels: int = 3) -> Source:
    """The source a ``--source`` value names; opened, so a wrong one is an error here."""
    text = text.strip()
    if not text:
        raise EdgekitError("--source is empty")
    source: Source
    if text == "picamera2" or text.startswith("picamera2:") and text[10:].isdigit():
        source = PiCameraSource(int(text[10:] or 0), text)
    elif text.isdigit() or text.startswith("/dev/video"):
        source = VideoSource(int(text) if text.isdigit() else text, "camera", text)
    elif text.lower().startswith(STREAM_SCHEMES):
        source = VideoSource(text, "stream", public_source(text))
    elif Path(text).is_dir():
        source = FileSource(text, _folder_lister(Path(text)), watch=watch, channels=channels)
    elif _has_magic(text):
        source = FileSource(text, _glob_lister(text), watch=watch, channels=channels)
    elif Path(text).is_file() and Path(text).suffix.lower() in IMAGE_SUFFIXES:
        source = FileSource(text, lambda: [text], channels=channels)
    elif Path(text).is_file():
        source = VideoSource(text, "video", text)
    else:
        raise EdgekitError(f"{text}: no such camera, video file, image folder, glob or stream URL")
    if watch and not isinstance(source, FileSource):
        raise EdgekitError("--watch takes an image folder or a glob, not a camera, video or stream")
    source.open()
    return source


def describe(source: Source) -> str:
    if isinstance(source, VideoSource):
        return f"{source.kind} {source.text}"
    if isinstance(source, PiCameraSource):
        return f"Pi camera {source.camera} (picamera2)"
    return f"{'watched ' if source.watch else ''}images {source.text}"


__all__ = [
    "Frame",
    "VideoSource",
    "FileSource",
    "PiCameraSource",
    "Source",
    "open_source",
    "describe",
    "public_source",
    "IMAGE_SUFFIXES",
]
