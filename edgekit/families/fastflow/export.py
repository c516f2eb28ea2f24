"""FastFlow's side of an export: backbone, flows and the anomaly map are all the network.

The exported graph is image → frozen backbone levels → one FastFlow block per level →
anomalib's anomaly map −mean over levels of exp(−½·mean_c z²), shape (N, 1, h, w) at the finest
level's grid (64² for a 256² input). The device only post-processes it (:mod:`edgekit.export.maps`):
bilinear up-sampling, blur and the image-score rule, with the parameters the run scored with.
"""

from __future__ import annotations

from edgekit.export.job import ExportOptions, FamilyParts
from edgekit.export.maps import map_parts
from edgekit.train.run import Run

SPLIT_TEXT = (
    "network: image -> backbone levels -> FastFlow blocks -> anomaly map -mean_levels exp(-0.5 mean_c z^2) "
    "(N, 1, h, w) at the finest level's grid; head (numpy): up-sampling, blur and image-score rule of the map"
)


def fastflow_parts(run: Run, options: ExportOptions) -> FamilyParts:
    """The run's FastFlow network (outputs its anomaly map) and a map head."""
    from edgekit.families.fastflow.train import SCORE_RULE, load_network

    return map_parts(load_network(run), run.config.get("head", SCORE_RULE), SPLIT_TEXT)
