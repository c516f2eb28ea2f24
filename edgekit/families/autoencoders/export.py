"""The autoencoders' side of an export (SAE, DAE): the whole anomaly map is the network.

The exported graph is image → reconstruction → per-pixel squared error (x − x̂)², shape
(N, 1, H, W), so the device only post-processes it (:mod:`edgekit.export.maps`): blur and the
image-score rule, with the parameters the training run scored with.
"""

from __future__ import annotations

from edgekit.export.job import ExportOptions, FamilyParts
from edgekit.export.maps import map_parts
from edgekit.train.run import Run

_SPLIT = (
    "network: image -> reconstruction -> per-pixel squared error (N, 1, H, W); "
    "head (numpy): blur and image-score rule of the map"
)


def autoencoder_parts(run: Run, options: ExportOptions) -> FamilyParts:
    """The run's autoencoder wrapped to output its squared-error map, and a map head."""
    from edgekit.families.autoencoders.train import SCORE_RULE, ErrorMapNetwork, load_network

    return map_parts(ErrorMapNetwork(load_network(run)), run.config.get("head", SCORE_RULE), _SPLIT)


def sae_parts(run: Run, options: ExportOptions) -> FamilyParts:
    """The sparse autoencoder's export parts."""
    return autoencoder_parts(run, options)


def dae_parts(run: Run, options: ExportOptions) -> FamilyParts:
    """The deep autoencoder's export parts."""
    return autoencoder_parts(run, options)
