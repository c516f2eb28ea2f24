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

from debian_tools import debian_tool


def mosquitto_path() -> str:
    """Path of Debian's mosquitto broker, installed once if missing (see debian_tools)."""
    return debian_tool("mosquitto", "/usr/sbin/mosquitto", what="the mosquitto MQTT broker")


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
    config.write_text(
        f"listener {port} {host}\nallow_anonymous true\npersistence false\n"
        "log_dest stderr\nlog_type error\nlog_type warning\n"
    )
    os.chmod(workdir, 0o755)  # mosquitto run as root drops to user mosquitto, which must read the config
    os.chmod(config, 0o644)
    log = workdir / "mosquitto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "-c", str(config)], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        if not wait_for_port(host, port):
            proc.poll()
            raise RuntimeError(
                f"mosquitto did not listen on {host}:{port} (exit {proc.returncode}): "
                f"{log.read_text(errors='replace').strip()[-500:]}"
            )
        yield host, port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
