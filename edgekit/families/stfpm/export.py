"""STFPM's side of an export: teacher, student and their anomaly map are the network.

The graph is image → frozen teacher and trained student pyramids → per level
0.5·||norm(t) − norm(s)||² → up-sampled to the first level's grid and multiplied → (N, 1, h, w)
(see :mod:`edgekit.families.stfpm.train`), so the device only post-processes it (:mod:`edgekit.export.maps`):
bilinear up-sampling to the input size, blur and the image-score rule the run scored with.
"""

from __future__ import annotations

from edgekit.export.job import ExportOptions, FamilyParts
from edgekit.export.maps import map_parts
from edgekit.train.run import Run

_SPLIT = (
    "network: image -> teacher and student pyramids -> product over levels of 0.5*||norm(t) - norm(s)||^2 "
    "at the first level's grid (N, 1, h, w); head (numpy): bilinear up-sampling, blur and image-score rule"
)


def stfpm_parts(run: Run, options: ExportOptions) -> FamilyParts:
    """The run's teacher + student graph ending in the anomaly map, and a map head."""
    from edgekit.families.stfpm.train import SCORE_RULE, load_network

    return map_parts(load_network(run), run.config.get("head", SCORE_RULE), _SPLIT)
