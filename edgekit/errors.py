"""The one exception type edgekit raises for problems a user can fix.

The CLI turns it into a single ``error: ...`` line and exit code 1; library callers catch it.
"""

import re


class EdgekitError(Exception):
    """A problem with the user's input (file, folder, bundle, option), stated in one line."""


class UnsupportedOp(EdgekitError):
    """A converter met an operator it cannot express; the export names it with the target."""

    def __init__(self, op: str, converter: str) -> None:
        super().__init__(f"op {op} is not supported by {converter}")
        self.op = op
        self.converter = converter


#: a line that only says where an error was raised: "Exception from src/inference/src/cpp/core.cpp:84:",
#: "Check 'is_valid(...)' failed at src/core/xml_util/src/xml_deserialize_util.cpp:900:"
_LOCATION_LINE = re.compile(r"^(Exception from .*|Check .* failed at .*|.*\.(cpp|hpp|cc|h|c|py)(:\d+)+):?\s*$")


def reason(exc: BaseException, *, limit: int = 300) -> str:
    """The line of a runtime's exception text that says what went wrong, not where.

    OpenVINO puts the C++ source location first and the reason ("Incorrect weights in bin file!")
    lines later; this skips location lines and keeps the first one left (capped at ``limit``).
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    told = [line for line in lines if not _LOCATION_LINE.match(line)] or lines
    if not told:
        return type(exc).__name__
    return told[0] if len(told[0]) <= limit else told[0][: limit - 1] + "…"
