"""The one exception type edgekit raises for problems a user can fix.

The CLI turns it into a single ``error: ...`` line and exit code 1; library callers catch it.
"""


class EdgekitError(Exception):
    """A problem with the user's input (file, folder, bundle, option), stated in one line."""
