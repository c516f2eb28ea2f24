"""The time an artefact says it was made: ``SOURCE_DATE_EPOCH`` when set, else now.

Runs, manifests, ``edgekit fit`` and reports carry a UTC creation time. A build that wants
byte-identical artefacts pins it the reproducible-builds.org way: ``SOURCE_DATE_EPOCH`` holds an
integer of seconds since 1970-01-01 UTC (``date +%s``). Empty counts as unset; any other value
that is not such an integer is one clear error, not a silently ignored setting. Standard library
only: the device imports this (``edgekit fit``).
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone

from edgekit.errors import EdgekitError

ENV = "SOURCE_DATE_EPOCH"
_INTEGER = re.compile(r"-?[0-9]+")


def created_time() -> str:
    """UTC ISO 8601 to the second: ``SOURCE_DATE_EPOCH`` when set, else the current time."""
    value = os.environ.get(ENV, "")
    if not value:
        return datetime.now(timezone.utc).isoformat(timespec="seconds")
    if not _INTEGER.fullmatch(value):
        raise EdgekitError(
            f"{ENV}={value[:40]!r} is not an integer of seconds since the epoch "
            "(as `date +%s` prints); set it to one or unset it"
        )
    try:
        return datetime.fromtimestamp(int(value), timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        raise EdgekitError(f"{ENV}={value[:40]!r} is out of range for a date (years 1 to 9999)") from None
