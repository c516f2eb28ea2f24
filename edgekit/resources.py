"""Where the data files that ship with edgekit live: ``targets/`` and ``calibration/``.

In a wheel they are packaged as ``edgekit/_data/<kind>``; in a source checkout (editable
install) they are the top-level folders beside the package.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_PACKAGE = Path(__file__).resolve().parent


def data_dir(kind: str) -> Path:
    for candidate in (_PACKAGE / "_data" / kind, _PACKAGE.parent / kind):
        if candidate.is_dir():
            return candidate
    raise EdgekitError(f"edgekit's {kind}/ folder is missing from this installation; reinstall edgekit")


def names(kind: str) -> list[str]:
    return sorted(p.stem for p in data_dir(kind).glob("*.toml"))


def read_toml(kind: str, name: str) -> dict[str, Any]:
    """Read ``<kind>/<name>.toml``; an unknown name gets a "did you mean" error."""
    known = names(kind)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise EdgekitError(f"unknown {kind[:-1]} {name!r}{hint} (known: {', '.join(known)})")
    path = data_dir(kind) / f"{name}.toml"
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise EdgekitError(f"{path}: unreadable ({exc})") from None
