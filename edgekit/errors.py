"""The one exception type edgekit raises for problems a user can fix.

The CLI turns it into a single ``error: ...`` line and exit code 1; library callers catch it.
"""


class EdgekitError(Exception):
    """A problem with the user's input (file, folder, bundle, option), stated in one line."""


class UnsupportedOp(EdgekitError):
    """A converter met an operator it cannot express; the export names it with the target."""

    def __init__(self, op: str, converter: str) -> None:
        super().__init__(f"op {op} is not supported by {converter}")
        self.op = op
        self.converter = converter
