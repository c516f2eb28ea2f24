"""DFM's own training options (``edgekit train --model dfm``); torch-free, read by the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.families.base import option


@dataclass(frozen=True)
class DfmOptions:
    """Level 2 is stride 8 (Lite0: 40 channels, 32×32 at 256²), pooled by 4 to an 8×8 grid (anomalib
    also pools by 4); 0.97 is anomalib's pca_level. Measurements: docs/training.md, "DFM"."""

    layer: int = option(
        2, "Backbone level whose features are modelled (1: stride 4, 2: stride 8, 3: stride 16).", low=1
    )
    pooling: int = option(4, "Average pooling over k x k grid positions before the PCA.", low=1)
    variance: float = option(
        0.97, "Share of the normal features' variance the PCA keeps.", low=0.0, high=1.0, open_low=True, open_high=True
    )
    batch_size: int = option(8, "Images per batch.", low=1)
