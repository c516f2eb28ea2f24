"""Real services for tests: Debian's mosquitto broker on a free loopback port.

`mosquitto_path` installs Debian's ``mosquitto`` with apt-get when it is missing and we are root (how
CI, a clean machine running as root with ``CI=true``, gets it). Without one, tests skip on a
workstation and FAIL in CI, where a silent skip would hide a missing check. `mosquitto_broker`
starts one broker and ends it by its PID, whatever the test did.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_mosquitto: str | None = None
_mosquitto_missing: str | None = None  # why there is no mosquitto, once we know


def mosquitto_path() -> str:
    """Path of the mosquitto binary, installing Debian's package once if missing (root only).

    Skips the calling test when none can be had, or fails it when env CI is "true"/"1".
    """
    global _mosquitto, _mosquitto_missing
    if _mosquitto is None and _mosquitto_missing is None:
        found = _find_mosquitto()
        if found is None:
            _mosquitto_missing = _install_mosquitto()
            found = _find_mosquitto()
        if found is not None:
            _mosquitto, _mosquitto_missing = found, None
        elif _mosquitto_missing is None:
            _mosquitto_missing = "apt-get installed mosquitto but no mosquitto binary was found"
    if _mosquitto is not None:
        return _mosquitto
    reason = f"the mosquitto MQTT broker is not available: {_mosquitto_missing}"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(reason)
    pytest.skip(reason)


def _find_mosquitto() -> str | None:
    if os.access("/usr/sbin/mosquitto", os.X_OK):  # Debian's place, often not on a user's PATH
        return "/usr/sbin/mosquitto"
    return shutil.which("mosquitto")


def _install_mosquitto() -> str | None:
    """Install Debian's mosquitto with apt-get (apt-get update first only if that fails); why not, or None."""
    if os.geteuid() != 0:
        return "not root, so it cannot be installed with apt-get (run: apt-get install mosquitto)"
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine to install it with"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "mosquitto"]
    why = _run(install, env)
    if why is not None:
        why = _run(["apt-get", "update", "-q"], env) or _run(install, env)
    return why


def _run(command: list[str], env: dict[str, str]) -> str | None:
    try:
        done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=900)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(command)}` took over 15 minutes"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return f"`{' '.join(command)}` exited {done.returncode}: {' / '.join(tail)}"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> bool:
    """True once ``host:port`` accepts a TCP connection, False after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def mosquitto_broker(port: int | None = None) -> Iterator[tuple[str, int]]:
    """Run a throw-away mosquitto on 127.0.0.1 (``port`` or a free one); yield (host, port); kill it by PID."""
    binary = mosquitto_path()
    host, port = "127.0.0.1", port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="edgekit-mosquitto-"))
    config = workdir / "mosquitto.conf"
    config.write_text(f"listener {port} {host}\nallow_anonymous true\npersistence false\n"
                      "log_dest stderr\nlog_type error\nlog_type warning\n")
    os.chmod(workdir, 0o755)  # mosquitto run as root drops to user mosquitto, which must read the config
    os.chmod(config, 0o644)
    log = workdir / "mosquitto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "-c", str(config)], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        if not wait_for_port(host, port):
            proc.poll()
            raise RuntimeError(f"mosquitto did not listen on {host}:{port} (exit {proc.returncode}): "
                               f"{log.read_text(errors='replace').strip()[-500:]}")
        yield host, port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
