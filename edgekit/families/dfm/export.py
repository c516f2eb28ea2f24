"""DFM's side of an export: backbone, pooling and the PCA reconstruction error are the network.

The graph is image → one frozen backbone level → k×k average pool → one 1×1 convolution with
M = I − WWᵀ and bias −Mμ → sum of squares over channels, (N, 1, h, w) (see
:mod:`edgekit.families.dfm.train`); the device only post-processes it (:mod:`edgekit.export.maps`).
"""

from __future__ import annotations

from edgekit.export.job import ExportOptions, FamilyParts
from edgekit.export.maps import map_parts
from edgekit.train.run import Run

_SPLIT = (
    "network: image -> backbone level -> average pool -> ||(I - WW^T)(f - mean)||^2 per position "
    "(N, 1, h, w); head (numpy): bilinear up-sampling, blur and image-score rule"
)


def dfm_parts(run: Run, options: ExportOptions) -> FamilyParts:
    """The run's DFM graph ending in the reconstruction-error map, and a map head."""
    from edgekit.families.dfm.train import SCORE_RULE, load_network

    return map_parts(load_network(run), run.config.get("head", SCORE_RULE), _SPLIT)
