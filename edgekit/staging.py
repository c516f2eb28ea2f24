"""Staging folders, what ``--overwrite`` may replace, and cleaning up after SIGTERM.

Outputs are built in a staging folder and renamed into place. A staging folder's name carries its
owner (host and PID), so a later run can remove staging left by a process that was killed
(SIGKILL, power loss) without touching one that is still working. SIGTERM raises in the main
thread (:func:`terminate_cleanly`), so ``finally`` blocks remove staging as they do on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from edgekit.errors import EdgekitError


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def owner_tag() -> str:
    """``<host>.<pid>-``: goes into every staging name this process makes."""
    return f"{_host()}.{os.getpid()}-"


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write one file whole or not at all: a temporary file beside it, renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_staging(prefix: str, parent: Optional[Path] = None) -> Path:
    """A new staging folder ``<prefix><host>.<pid>-XXXX`` in ``parent`` (default: TMPDIR); stale
    staging of the same prefix there is swept first."""
    sweep_stale(prefix, parent)
    return Path(tempfile.mkdtemp(prefix=prefix + owner_tag(), dir=parent))


def sweep_stale(prefix: str, parent: Optional[Path] = None) -> list[Path]:
    """Remove ``<prefix><host>.<pid>-*`` entries of this host whose process is gone; returns them.

    Staging of another host (a shared folder) is left alone: its PIDs mean nothing here.
    """
    folder = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    pattern = re.compile(re.escape(prefix) + re.escape(_host()) + r"\.(\d+)-")
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user
        return True
    return True


def refuse_unowned(dest: Path, *, owned: Callable[[Path], bool], what: str, protect: Iterable[Path] = ()) -> None:
    """Refuse to replace ``dest`` unless it is edgekit's own ``what`` (``owned(dest)``) or an empty
    folder, and never the current folder, a parent of it, or a ``protect`` path or a parent of one
    (the dataset a run is trained on)."""
    dest = Path(dest)
    if not (dest.exists() or dest.is_symlink()):
        return
    resolved = dest.resolve()
    for kept, why in [(Path.cwd(), "the current folder"), *((Path(p), "the data") for p in protect)]:
        kept = kept.resolve()
        if resolved == kept or resolved in kept.parents:
            raise EdgekitError(
                f"refusing to replace {dest}: it is {why}" + ("" if resolved == kept else f" or holds it ({kept})")
            )
    if dest.is_dir() and not dest.is_symlink() and not any(dest.iterdir()):
        return
    if not owned(dest):
        raise EdgekitError(
            f"refusing to replace {dest}: it is not an edgekit {what}; choose another --out "
            f"(--overwrite replaces only a {what})"
        )


class Terminated(SystemExit):
    """SIGTERM, raised where the main thread is so that ``finally`` blocks run."""


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """While inside, SIGTERM exits with status 143 through the normal unwinding (staging removed).

    A no-op outside the main thread, or when someone else already handles SIGTERM.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (
        signal.SIG_DFL,
        None,
    ):
        yield
        return

    def handler(signum, frame):
        raise Terminated(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
