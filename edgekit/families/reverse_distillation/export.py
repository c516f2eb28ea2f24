"""Reverse Distillation's side of an export: the whole anomaly map is the network.

The exported graph is image → frozen encoder → one-class bottleneck → decoder → per level
1 − cosine similarity of encoder and decoder features → deeper levels resized to the stride-4 grid
and added, shape (N, 1, S/4, S/4). The device only post-processes it (:mod:`edgekit.export.maps`):
up-sampling to the input size, the σ = 4 blur and the image-score rule the training run scored with.
"""

from __future__ import annotations

from edgekit.export.job import ExportOptions, FamilyParts
from edgekit.export.maps import map_parts
from edgekit.train.run import Run

_SPLIT = (
    "network: image -> encoder -> bottleneck -> decoder -> per-level 1 - cosine similarity, "
    "resized to the stride-4 grid and combined (N, 1, h, w); "
    "head (numpy): up-sampling to the input size, blur and image-score rule of the map"
)


def reverse_distillation_parts(run: Run, options: ExportOptions) -> FamilyParts:
    """The run's encoder, bottleneck and decoder ending in the anomaly map, and a map head."""
    from edgekit.families.reverse_distillation.train import SCORE_RULE, load_network

    return map_parts(load_network(run), run.config.get("head", SCORE_RULE), _SPLIT)
