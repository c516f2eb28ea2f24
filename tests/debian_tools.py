"""Debian programs the tests drive for real (chromium, mosquitto): found, or installed once with apt.

`debian_tool` returns the binary's path, installing the package with apt-get when it is missing and
we are root: that is how CI (a clean machine, ``bash .ci/run`` as root with ``CI=true``) gets them.
Without one, the calling test skips on a workstation and FAILS in CI, where a silent skip would hide
a missing check. The answer (or why there is none) is remembered per package.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

_found: dict[str, str] = {}
_missing: dict[str, str] = {}  # package -> why it cannot be had


def debian_tool(package: str, binary: str, *, what: str) -> str:
    """Path of ``binary`` (checked at its Debian place, then on PATH), installing ``package`` once."""
    if package not in _found and package not in _missing:
        path = _find(binary)
        if path is None:
            why = _install(package)
            path = _find(binary)
            if path is None:
                why = why or f"apt-get installed {package} but no {os.path.basename(binary)} binary was found"
                _missing[package] = why
        if path is not None:
            _found[package] = path
    if package in _found:
        return _found[package]
    reason = f"{what} is not available: {_missing[package]}"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(reason)
    pytest.skip(reason)


def _find(binary: str) -> str | None:
    if os.path.isabs(binary) and os.access(binary, os.X_OK):  # Debian's place, maybe not on PATH (/usr/sbin)
        return binary
    return shutil.which(os.path.basename(binary))


def _install(package: str) -> str | None:
    """apt-get install (with apt-get update first only if that fails); why it failed, or None."""
    if os.geteuid() != 0:
        return f"not root, so it cannot be installed with apt-get (run: apt-get install {package})"
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine to install it with"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    why = _run(install, env)
    if why is not None:
        why = _run(["apt-get", "update", "-q"], env) or _run(install, env)
    return why


def _run(command: list[str], env: dict[str, str]) -> str | None:
    try:
        done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(command)}` took over 15 minutes"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return f"`{' '.join(command)}` exited {done.returncode}: {' / '.join(tail)}"
    return None
