"""The autoencoders' side of an export (SAE, DAE): the whole anomaly map is the network.

The exported graph is image → reconstruction → per-pixel squared error (x − x̂)², shape
(N, 1, H, W), so the device only post-processes it: :class:`edgekit.runtime.heads.MapHead`
(optional blur, the image-score rule) in numpy, with the parameters the training run scored with.
There are no head arrays.
"""
from __future__ import annotations

from edgekit.bundle import HeadSpec
from edgekit.errors import EdgekitError
from edgekit.export.job import ExportOptions
from edgekit.export.patchcore import FamilyParts
from edgekit.train.run import Run

_SPLIT = ("network: image -> reconstruction -> per-pixel squared error (N, 1, H, W); "
          "head (numpy): blur and image-score rule of the map")


def _refuse_bank_options(options: ExportOptions) -> None:
    if options.bank_dims is not None or options.bank_dtype is not None or options.bank_size is not None:
        raise EdgekitError("--bank-* options apply to PatchCore only")


def autoencoder_parts(run: Run, options: ExportOptions) -> FamilyParts:
    """The run's autoencoder wrapped to output its squared-error map, and a map head."""
    _refuse_bank_options(options)
    from edgekit.train.autoencoders import SCORE_RULE, ErrorMapNetwork, load_network

    network = ErrorMapNetwork(load_network(run)).eval()
    head = HeadSpec(kind="map", params=dict(run.config.get("head", SCORE_RULE)), arrays={})
    return FamilyParts(network=network, head=head, arrays={}, notes={"split": _SPLIT})


def sae_parts(run: Run, options: ExportOptions) -> FamilyParts:
    """The sparse autoencoder's export parts."""
    return autoencoder_parts(run, options)


def dae_parts(run: Run, options: ExportOptions) -> FamilyParts:
    """The deep autoencoder's export parts."""
    return autoencoder_parts(run, options)
