"""edgekit: visual anomaly detection from training to embedded devices.

``edgekit.load(bundle)`` is the device entry point; it imports numpy and the one runtime the
bundle names, never torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgekit.errors import EdgekitError

__version__ = "0.1.0"
__all__ = ["EdgekitError", "__version__", "load"]

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.runtime.detector import Detector


def load(path, **options) -> "Detector":
    """Open a bundle (folder or ``.edgekit`` file) and return a ready :class:`Detector`."""
    from edgekit.runtime.detector import load as _load

    return _load(path, **options)
