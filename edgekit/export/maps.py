"""The export side of the families whose network outputs the anomaly map itself.

The graph is image → (N, 1, h, w) map (reconstruction error, feature distance, log-likelihood,
...), and the device only post-processes it with :class:`edgekit.runtime.heads.MapHead`
(bilinear up-sampling to the input size, blur, the image-score rule) with the parameters the
training run scored with. There are no head arrays.
"""

from __future__ import annotations

from typing import Any, Mapping

from edgekit.bundle import HeadSpec
from edgekit.export.job import FamilyParts

OUTPUT_NAME = "anomaly_map"


def map_parts(network: Any, head_params: Mapping[str, Any], split: str) -> FamilyParts:
    """``network`` (image → map) and a map head with ``head_params``; ``split`` says, for the
    manifest, what the graph computes and what the numpy head does."""
    head = HeadSpec(kind="map", params=dict(head_params), arrays={})
    return FamilyParts(network=network.eval(), head=head, arrays={}, notes={"split": split}, output_name=OUTPUT_NAME)
