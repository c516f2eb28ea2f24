"""EfficientAD's side of an export: the whole anomaly map is the network.

The exported graph is image → teacher, student and autoencoder → the two squared-difference maps,
zero-padded, quantile-normalised and averaged (N, 1, S/4, S/4) (see
:class:`edgekit.families.efficient_ad.train.EfficientAdMap`); the device only up-samples, blurs and scores
it (:mod:`edgekit.export.maps`) with the parameters the training run scored with.
"""

from __future__ import annotations

from edgekit.export.job import ExportOptions, FamilyParts
from edgekit.export.maps import map_parts
from edgekit.train.run import Run

_SPLIT = (
    "network: image -> PDN teacher, PDN student, autoencoder -> 0.5 * normalised student-teacher map + "
    "0.5 * normalised student-autoencoder map (N, 1, S/4, S/4); head (numpy): bilinear up-sampling, "
    "blur and image-score rule of the map"
)

#: What exporting a pdn-teacher run says (export_run raises it for model "pdn-teacher").
TEACHER_NOT_A_DETECTOR = (
    "a pdn-teacher run is a teacher for EfficientAD, not a detector: train one with "
    "`edgekit train --model efficient_ad --teacher-weights RUN` and export that run"
)


def efficient_ad_parts(run: Run, options: ExportOptions) -> FamilyParts:
    """The run's whole EfficientAD map graph and a map head."""
    from edgekit.families.efficient_ad.train import SCORE_RULE, load_network

    return map_parts(load_network(run), run.config.get("head", SCORE_RULE), _SPLIT)
