"""PatchCore's own training options (``edgekit train --model patchcore``); torch-free, read by the CLI."""
from __future__ import annotations

from dataclasses import dataclass

from edgekit.families.base import option


@dataclass(frozen=True)
class PatchcoreOptions:
    coreset_ratio: float = option(0.1, "Share of the training patches kept in the memory bank.",
                                  low=0.0, high=1.0, open_low=True)
    num_neighbors: int = option(9, "Neighbours of a patch's nearest bank row that re-weight the image score.", low=1)
    batch_size: int = option(8, "Images per batch.", low=1)
