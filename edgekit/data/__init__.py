"""Datasets: readers for MVTec AD, VisA and plain folders, and the embedded default data."""

from __future__ import annotations

from edgekit.data.datasets import Dataset, Sample, open_dataset, read_folder, read_mvtec, read_visa
from edgekit.data.synth import DEFECT_KINDS, TEXTURES, synthesize

__all__ = [
    "DEFECT_KINDS",
    "TEXTURES",
    "Dataset",
    "Sample",
    "open_dataset",
    "read_folder",
    "read_mvtec",
    "read_visa",
    "synthesize",
]
