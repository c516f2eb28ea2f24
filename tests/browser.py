"""Headless Chromium for tests: load a self-contained HTML page and report what a person would see.

`render_page` starts Debian's Chromium with ``--remote-debugging-pipe`` and speaks the Chrome DevTools
Protocol to it directly (NUL-terminated JSON on fds 3 and 4), so no Python package beyond the standard
library and Pillow is needed. It records console output, uncaught exceptions, every requested URL, and
a PNG of the viewport. Requests that would leave the machine are recorded and then blocked (the sandbox
and CI have no network, and a report must not need one), so a page that asks for an outside URL still
finishes loading quickly and its request shows up in `PageResult.external_requests`.

`open_served_page` does the same for a page served on this machine (http://127.0.0.1:PORT/): requests
to that one origin go through, every other one is recorded and failed (DevTools' Fetch interception),
and the test drives the live page: evaluate JavaScript, wait for a condition, take screenshots.

`chromium_path` installs Debian's ``chromium`` with apt-get when it is missing and we are root: that is
how CI (a clean machine, ``bash .ci/run`` as root with ``CI=true``) gets its browser. Without one, tests
skip on a workstation and FAIL in CI, where a silent skip would hide a missing check.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from debian_tools import debian_tool

#: schemes that stay inside the page or on this machine; anything else is an outside request
LOCAL_SCHEMES = frozenset({"file", "data", "blob", "about"})
#: URL patterns Chromium refuses to fetch (recorded first by Network.requestWillBeSent, then failed)
BLOCKED_URLS = ("http://*", "https://*", "ws://*", "wss://*", "ftp://*")
SETTLE_QUIET_S = 0.3  # after the load event: wait until the page has been quiet this long ...
SETTLE_MAX_S = 2.0  # ... but no longer than this


class BrowserError(RuntimeError):
    """Chromium failed, answered a command with an error, or did not answer in time."""


@dataclass
class PageResult:
    """What one page load showed: console output, requested URLs and a PNG of the viewport."""

    console_errors: list[str] = field(default_factory=list)
    console_messages: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    screenshot_png: bytes = b""
    allowed_origins: tuple[str, ...] = ()  # e.g. ("http://127.0.0.1:8080",) for a served page

    @property
    def external_requests(self) -> list[str]:
        """Requested URLs whose scheme is not file:, data:, blob: or about: and whose origin is not
        allowed (would need a network)."""
        return [
            url
            for url in self.requests
            if urlsplit(url).scheme.lower() not in LOCAL_SCHEMES and _origin(url) not in self.allowed_origins
        ]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.rsplit('@', 1)[-1].lower()}"


def chromium_path() -> str:
    """Path of Debian's Chromium, installed once if missing (see debian_tools)."""
    return debian_tool("chromium", "/usr/bin/chromium", what="headless Chromium")


def render_page(html_path: Path, *, width: int = 1280, height: int = 900, timeout: float = 60) -> PageResult:
    """Load `html_path` in a fresh headless Chromium; return its console output, requests and screenshot.

    Raises BrowserError if Chromium dies, refuses a command, or the whole load takes over `timeout` s.
    """
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(f"no HTML page at {html_path}")
    with _browser(width, height, timeout, html_path.name) as cdp:
        return _load(cdp, html_path, width, height)


@contextlib.contextmanager
def _browser(width: int, height: int, timeout: float, what: str) -> Iterator["_Cdp"]:
    """A fresh headless Chromium on a debugging pipe, ended with its whole process group on exit."""
    binary = chromium_path()
    deadline = time.monotonic() + timeout
    workdir = Path(tempfile.mkdtemp(prefix="edgekit-chromium-"))
    stderr_log = workdir / "chromium-stderr.log"
    proc: subprocess.Popen | None = None
    cdp: _Cdp | None = None
    pipe_fds: list[int] = []  # closed in the finally unless handed over
    try:
        to_child_r, to_child_w = _pipe_above(10, pipe_fds)
        from_child_r, from_child_w = _pipe_above(10, pipe_fds)

        # Chromium wants the pipe on fds 3 and 4. pass_fds keeps our two ends open in the child
        # under their own numbers (>= 10, so they cannot clash with 3/4) and bash moves them into
        # place before exec'ing Chromium. A preexec_fn would do the same, but forces a plain fork()
        # in a process that may run threads (torch, JAX), which can deadlock.
        move_fds = f'exec "$@" 3<&{to_child_r} 4>&{from_child_w} {to_child_r}<&- {from_child_w}>&-'
        flags = _flags(workdir / "profile", width, height)
        command = [_bash(), "-c", move_fds, "chromium-on-pipe", binary, *flags]
        with open(stderr_log, "wb") as stderr:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                pass_fds=(to_child_r, from_child_w),
                start_new_session=True,  # its own process group, so the finally can end all of it
            )
        for child_end in (to_child_r, from_child_w):  # after this, EOF on from_child_r means Chromium is gone
            pipe_fds.remove(child_end)
            os.close(child_end)
        cdp = _Cdp(to_child_w, from_child_r, deadline, stderr_log)
        pipe_fds.clear()  # cdp closes its two ends
        cdp.timeout_note = f" ({timeout:g} s for {what})"
        yield cdp
    finally:
        for fd in pipe_fds:
            os.close(fd)
        if cdp is not None:
            cdp.close_browser()
            cdp.close_fds()
        if proc is not None:
            _end_process_group(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def is_blank(png: bytes) -> bool:
    """True when the PNG is (almost) one colour: under 2 distinct colours, or every channel's std < 1."""
    from PIL import Image, ImageStat

    with Image.open(io.BytesIO(png)) as image:
        rgb = image.convert("RGB")
    colours = rgb.getcolors(maxcolors=1)  # None when there are 2 or more
    if colours is not None:
        return True
    return max(ImageStat.Stat(rgb).stddev) < 1.0


def _flags(profile: Path, width: int, height: int) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--mute-audio",
        "--hide-scrollbars",
        # Belt and braces with BLOCKED_URLS: anything Chromium itself fetches goes to a closed
        # loopback port instead of out of the machine (loopback stays direct, as by default).
        "--proxy-server=http://127.0.0.1:9",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "--remote-debugging-pipe",
        "about:blank",
    ]


def _bash() -> str:
    bash = shutil.which("bash") or "/bin/bash"
    if not os.access(bash, os.X_OK):
        raise BrowserError("bash is needed to hand Chromium its debugging pipe, and there is none")
    return bash


def _pipe_above(lowest: int, opened: list[int]) -> tuple[int, int]:
    """An os.pipe() whose fds are >= `lowest` and close-on-exec (so moving them onto 3/4 cannot clash).

    Each fd is appended to `opened` as soon as it exists, so the caller can close them on any failure.
    """
    low_read, low_write = os.pipe()
    try:
        for fd in (low_read, low_write):
            opened.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest))
    finally:
        os.close(low_read)
        os.close(low_write)
    return opened[-2], opened[-1]


def _end_process_group(proc: subprocess.Popen) -> None:
    """Wait briefly for Chromium to exit after Browser.close, then kill what is left of its group."""
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # renderers and zygotes share the group we created
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _load(cdp: "_Cdp", html_path: Path, width: int, height: int) -> PageResult:
    result = PageResult()
    state = {"navigating": False, "loaded": False}
    cdp.on_event = _recorder(result, state)
    target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Runtime", "Log", "Page", "Network"):
        cdp.call(f"{domain}.enable", session=session)
    cdp.call("Network.setBlockedURLs", {"urls": list(BLOCKED_URLS)}, session=session)
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        session=session,
    )
    state["navigating"] = True
    navigated = cdp.call("Page.navigate", {"url": html_path.as_uri()}, session=session)
    if navigated.get("errorText"):
        raise BrowserError(f"Chromium could not open {html_path}: {navigated['errorText']}")
    cdp.wait_for(lambda: state["loaded"], "the page's load event")
    cdp.settle(quiet=SETTLE_QUIET_S, longest=SETTLE_MAX_S)
    shot = cdp.call("Page.captureScreenshot", {"format": "png"}, session=session)
    result.screenshot_png = base64.b64decode(shot["data"])
    return result


def _recorder(result: PageResult, state: dict):
    """A CDP event handler that records console output, errors and requested URLs into `result`."""

    def on_event(method: str, params: dict) -> None:
        if method == "Runtime.consoleAPICalled":
            text = _console_text(params)
            result.console_messages.append(f"{params.get('type')}: {text}")
            if params.get("type") in ("error", "assert"):
                result.console_errors.append(text)
        elif method == "Runtime.exceptionThrown":
            text = _exception_text(params.get("exceptionDetails", {}))
            result.console_messages.append(f"exception: {text}")
            result.console_errors.append(text)
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            text = _log_text(entry)
            result.console_messages.append(f"{entry.get('level')}: {text}")
            if entry.get("level") == "error":
                result.console_errors.append(text)
        elif method == "Network.requestWillBeSent":
            result.requests.append(params.get("request", {}).get("url", ""))
        elif method == "Page.loadEventFired" and state["navigating"]:
            state["loaded"] = True

    return on_event


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})


class ServedPage:
    """A page from a local server, open in headless Chromium; see `open_served_page`.

    `result` fills as the page runs (console errors, requested URLs); the page only runs while a
    method here is reading Chromium's messages, so wait with `wait_until` or `run_for`, not sleep.
    """

    def __init__(self, cdp: "_Cdp", session: str, result: PageResult) -> None:
        self._cdp, self._session, self.result = cdp, session, result

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited); BrowserError if it throws."""
        reply = self._cdp.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=self._session,
        )
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression!r} threw: {_exception_text(reply['exceptionDetails'])}")
        return reply.get("result", {}).get("value")

    def wait_until(self, expression: str, *, timeout: float = 10.0, poll: float = 0.1) -> Any:
        """Let the page run until `expression` is truthy; its value. BrowserError after `timeout` s."""
        give_up = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() >= give_up:
                raise BrowserError(f"after {timeout:g} s, {expression!r} is still {value!r}")
            self.run_for(poll)

    def run_for(self, seconds: float) -> None:
        """Let the page run (its requests answered, its events recorded) for `seconds`."""
        until = min(self._cdp.deadline, time.monotonic() + seconds)
        while time.monotonic() < until:
            self._cdp.read_until(until)

    def screenshot(self) -> bytes:
        """A PNG of the viewport now (also kept as `result.screenshot_png`)."""
        shot = self._cdp.call("Page.captureScreenshot", {"format": "png"}, session=self._session)
        self.result.screenshot_png = base64.b64decode(shot["data"])
        return self.result.screenshot_png


@contextlib.contextmanager
def open_served_page(url: str, *, width: int = 1280, height: int = 900, timeout: float = 60) -> Iterator[ServedPage]:
    """Open `url` (http on 127.0.0.1, localhost or [::1]) in a fresh headless Chromium, after its load event.

    Requests to the URL's own origin are let through; every other one is recorded in
    `result.requests` and failed, so `result.external_requests` lists what would have left the page's
    server. The whole session (load and everything done with the page) must end within `timeout` s.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.netloc.rsplit(":", 1)[0].lower() not in LOOPBACK_HOSTS:
        raise ValueError(f"open_served_page opens http://127.0.0.1:PORT/ pages (loopback), not {url!r}")
    origin = _origin(url)
    with _browser(width, height, timeout, url) as cdp:
        result = PageResult(allowed_origins=(origin,))
        state = {"navigating": False, "loaded": False}
        record = _recorder(result, state)
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

        def on_event(method: str, params: dict) -> None:
            if method == "Fetch.requestPaused":  # every request of the page stops here until we answer
                request_url = params.get("request", {}).get("url", "")
                if _origin(request_url) == origin:
                    cdp.send("Fetch.continueRequest", {"requestId": params["requestId"]}, session=session)
                else:
                    cdp.send(
                        "Fetch.failRequest",
                        {"requestId": params["requestId"], "errorReason": "BlockedByClient"},
                        session=session,
                    )
            record(method, params)

        cdp.on_event = on_event
        for domain in ("Runtime", "Log", "Page", "Network"):
            cdp.call(f"{domain}.enable", session=session)
        cdp.call("Fetch.enable", {"patterns": [{"urlPattern": "*", "requestStage": "Request"}]}, session=session)
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        state["navigating"] = True
        navigated = cdp.call("Page.navigate", {"url": url}, session=session)
        if navigated.get("errorText"):
            raise BrowserError(f"Chromium could not open {url}: {navigated['errorText']}")
        cdp.wait_for(lambda: state["loaded"], "the page's load event")
        yield ServedPage(cdp, session, result)


def _remote_object_text(obj: dict) -> str:
    if "value" in obj:
        value = obj["value"]
        return value if isinstance(value, str) else json.dumps(value)
    return str(obj.get("unserializableValue") or obj.get("description") or obj.get("type", "?"))


def _where(url: str | None, line: int | None, column: int | None = None) -> str:
    if not url:
        return ""
    where = f"{url}:{(line or 0) + 1}"  # CDP lines and columns are 0-based
    return f" ({where}:{column + 1})" if column is not None else f" ({where})"


def _console_text(params: dict) -> str:
    text = " ".join(_remote_object_text(arg) for arg in params.get("args", []))
    if params.get("type") == "assert":
        text = f"Assertion failed: {text}" if text else "Assertion failed"
    frames = (params.get("stackTrace") or {}).get("callFrames") or []
    if frames:
        top = frames[0]
        text += _where(top.get("url"), top.get("lineNumber"), top.get("columnNumber"))
    return text


def _exception_text(details: dict) -> str:
    exception = details.get("exception") or {}
    described = (exception.get("description") or "").splitlines()
    message = described[0] if described else _remote_object_text(exception) if exception else ""
    text = f"{details.get('text', 'Uncaught')} {message}".strip()
    return text + _where(details.get("url"), details.get("lineNumber"), details.get("columnNumber"))


def _log_text(entry: dict) -> str:
    text = f"[{entry.get('source', '?')}] {entry.get('text', '')}"
    return text + _where(entry.get("url"), entry.get("lineNumber"))


class _Cdp:
    """A minimal DevTools Protocol client over Chromium's debugging pipe (NUL-terminated JSON)."""

    def __init__(self, write_fd: int, read_fd: int, deadline: float, stderr_log: Path) -> None:
        self.write_fd, self.read_fd = write_fd, read_fd
        self.deadline, self.stderr_log = deadline, stderr_log
        self.on_event = lambda method, params: None
        self.buffer = b""
        self.next_id = 0
        self.replies: dict[int, dict] = {}
        self.open = True
        self.timeout_note = ""
        self.unawaited: set[int] = set()  # ids of commands sent with send()
        self.errors: list[str] = []  # errors Chromium answered to those

    def call(self, method: str, params: dict | None = None, *, session: str | None = None) -> dict:
        """Send a command and wait for its reply (events met meanwhile go to on_event)."""
        self.next_id += 1
        command_id = self.next_id
        message: dict = {"id": command_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self._write(json.dumps(message).encode() + b"\0")
        self.wait_for(lambda: command_id in self.replies, f"the reply to {method}")
        reply = self.replies.pop(command_id)
        if "error" in reply:
            raise BrowserError(f"Chromium refused {method}: {reply['error'].get('message', reply['error'])}")
        return reply.get("result", {})

    def send(self, method: str, params: dict | None = None, *, session: str | None = None) -> None:
        """Send a command without waiting: its reply is dropped unless it is an error (kept in `errors`)."""
        self.next_id += 1
        self.unawaited.add(self.next_id)
        message: dict = {"id": self.next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self._write(json.dumps(message).encode() + b"\0")

    def read_until(self, until: float) -> None:
        """Read and dispatch what Chromium sends until `until` (or the deadline); BrowserError if it exits."""
        self._read_some(min(until, self.deadline))

    def wait_for(self, done, what: str) -> None:
        """Read messages until done() is true; raise BrowserError at the deadline or if Chromium exits."""
        while not done():
            if not self._read_some(self.deadline):
                raise BrowserError(f"headless Chromium timed out waiting for {what}{self.timeout_note}")

    def settle(self, *, quiet: float, longest: float) -> None:
        """Keep reading until no message has come for `quiet` s, for at most `longest` s."""
        give_up = min(self.deadline, time.monotonic() + longest)
        while time.monotonic() < give_up:
            if not self._read_some(min(give_up, time.monotonic() + quiet)):
                return

    def close_browser(self) -> None:
        """Ask Chromium to quit (best effort: the caller kills it anyway)."""
        if self.open:
            try:
                self._write(json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            except (BrowserError, OSError):
                pass

    def close_fds(self) -> None:
        for fd in (self.write_fd, self.read_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.open = False

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            remaining = self.deadline - time.monotonic()
            _, writable, _ = select.select([], [self.write_fd], [], max(remaining, 0))
            if not writable:
                raise BrowserError(f"headless Chromium stopped reading commands{self.timeout_note}")
            try:
                view = view[os.write(self.write_fd, view) :]
            except BrokenPipeError:
                self.open = False
                raise BrowserError(f"headless Chromium exited early{self._stderr_tail()}") from None

    def _read_some(self, until: float) -> bool:
        """Read once (waiting until `until` at most) and dispatch whole messages; False if nothing came."""
        remaining = until - time.monotonic()
        readable, _, _ = select.select([self.read_fd], [], [], max(remaining, 0))
        if not readable:
            return False
        chunk = os.read(self.read_fd, 1 << 20)
        if not chunk:
            self.open = False
            raise BrowserError(f"headless Chromium exited early{self._stderr_tail()}")
        self.buffer += chunk
        *messages, self.buffer = self.buffer.split(b"\0")
        for raw in messages:
            message = json.loads(raw)
            if "id" in message and message["id"] in self.unawaited:
                self.unawaited.discard(message["id"])
                if "error" in message:
                    self.errors.append(str(message["error"].get("message", message["error"])))
            elif "id" in message:
                self.replies[message["id"]] = message
            elif "method" in message:
                self.on_event(message["method"], message.get("params", {}))
        return True

    def _stderr_tail(self) -> str:
        try:
            lines = self.stderr_log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        # Chromium always logs that it cannot reach D-Bus (there is none in a container): not the cause
        lines = [line for line in lines if "dbus" not in line.lower()][-5:]
        return (": " + " / ".join(lines)) if lines else ""
