"""The device runtime: numpy and, lazily, the one backend a bundle names. Never torch."""

from edgekit.runtime.detector import Detector, Prediction, load

__all__ = ["Detector", "Prediction", "load"]
