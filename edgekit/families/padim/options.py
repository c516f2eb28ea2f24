"""PaDiM's own training options (``edgekit train --model padim``); torch-free, read by the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.families.base import option


@dataclass(frozen=True)
class PadimOptions:
    """64 channels are the knee of image / pixel AUROC against head size (docs/training.md, "PaDiM")."""

    dims: int = option(64, "Channels of the backbone levels kept (a seeded random subset).", low=1)
    batch_size: int = option(8, "Images per batch.", low=1)
