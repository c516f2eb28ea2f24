"""A systemd unit that keeps ``edgekit run`` inspecting across crashes and reboots.

``edgekit run ... --print-systemd-unit --user NAME`` prints :func:`systemd_unit` for its own
command line. Every argument is written the way systemd.syntax(7) and systemd.service(5)
("Command lines") read it back: each one double-quoted, ``\\`` and ``"`` escaped with a backslash,
control characters as C escapes, ``%`` doubled (unit specifiers) and ``$`` doubled (environment
variable expansion), so what systemd executes is exactly the list given here.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from edgekit.errors import EdgekitError

#: what the service does when asked to stop or when it fails
RESTART_SEC = 5
TIMEOUT_STOP_SEC = 30  # SIGTERM lets `edgekit run` finish its frame and flush its sinks; SIGKILL after this

# systemd accepts user names like these (and numeric UIDs); anything else is a typo or an injection
_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*|[0-9]+")
_C_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v"}
# systemd refuses an executable path holding these ("Executable name contains special characters"),
# and never expands variables in it, so "$" could not be written unambiguously either
_EXECUTABLE_REFUSED = set("\"'\\$")


def quote_argument(argument: str) -> str:
    """One command-line argument as systemd reads it back unchanged: double-quoted and escaped."""
    if "\0" in argument:
        raise EdgekitError("a command-line argument cannot contain a NUL character")
    out = []
    for char in argument:
        if char in ("\\", '"'):
            out.append("\\" + char)
        elif char in _C_ESCAPES:
            out.append(_C_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        elif char == "%":
            out.append("%%")
        elif char == "$":
            out.append("$$")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _executable(path: str) -> str:
    if not path.startswith("/"):
        raise EdgekitError(f"systemd needs the absolute path of the program to start, got {path!r}")
    bad = sorted({c for c in path if c in _EXECUTABLE_REFUSED or ord(c) < 0x20 or ord(c) == 0x7F})
    if bad:
        raise EdgekitError(
            f"systemd cannot start a program whose path contains {''.join(bad)!r}: {path} "
            f"(install the venv under a plain path)"
        )
    return '"' + path.replace("%", "%%") + '"'


def _plain_value(value: str, what: str) -> str:
    """A setting that takes the rest of the line: no line breaks, specifiers escaped."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise EdgekitError(f"the service's {what} cannot contain control characters: {value!r}")
    return value.replace("%", "%%")


def systemd_unit(
    command: Sequence[str],
    *,
    user: str,
    working_directory: str,
    description: str = "edgekit anomaly inspection (edgekit run)",
    environment_file: Optional[str] = None,
) -> str:
    """The text of a systemd service unit that runs ``command`` as ``user`` in ``working_directory``.

    ``command[0]`` must be an absolute path (the venv's ``edgekit`` script). The service starts
    once the network is up, restarts on failure, stops with SIGTERM (``edgekit run`` then flushes
    and exits 0), never runs as root and keeps access to cameras (group ``video``).
    ``environment_file`` (absolute) is read by systemd as root before it drops to ``user``: the
    place for a secret such as ``EDGEKIT_TOKEN=...`` in a root-only file, since a unit file and a
    command line are readable by every user of the device.
    """
    if not command:
        raise EdgekitError("the service needs a command to run")
    if user in ("root", "0"):
        raise EdgekitError("the service must not run as root: pass --user with the account that owns the venv")
    if not _USER_NAME.fullmatch(user or ""):
        raise EdgekitError(f"not a valid user name for the service: {user!r}")
    if not working_directory.startswith("/"):
        raise EdgekitError(f"the service's working directory must be an absolute path, got {working_directory!r}")
    if environment_file is not None and not environment_file.startswith("/"):
        raise EdgekitError(f"the environment file must be an absolute path, got {environment_file!r}")
    exec_start = " ".join([_executable(command[0]), *(quote_argument(arg) for arg in command[1:])])
    return "\n".join(
        [
            "[Unit]",
            f"Description={_plain_value(description, 'description')}",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            "Type=exec",
            f"User={user}",
            "# cameras (/dev/video*, /dev/media*) belong to group video",
            "SupplementaryGroups=video",
            f"WorkingDirectory={_plain_value(working_directory, 'working directory')}",
            "Environment=PYTHONUNBUFFERED=1",
            *([f"EnvironmentFile={_plain_value(environment_file, 'environment file')}"] if environment_file else []),
            f"ExecStart={exec_start}",
            "Restart=on-failure",
            f"RestartSec={RESTART_SEC}",
            "# SIGTERM: edgekit run finishes the current frame, flushes its outputs and exits 0",
            "KillSignal=SIGTERM",
            f"TimeoutStopSec={TIMEOUT_STOP_SEC}",
            "NoNewPrivileges=yes",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )
