"""PatchCore's own training options (``edgekit train --model patchcore``); torch-free, read by the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edgekit.families.base import option


@dataclass(frozen=True)
class PatchcoreOptions:
    coreset_ratio: float = option(
        0.1, "Share of the training patches kept in the memory bank.", low=0.0, high=1.0, open_low=True
    )
    coreset_rows: Optional[int] = option(
        None,
        "Memory-bank rows to keep, instead of --coreset-ratio (which keeps at most 16,384): greedy "
        "k-center costs patches x rows, so with a fixed bank its work grows with the images, not "
        "their square.",
        low=1,
    )
    coreset: str = option(
        "auto",
        "Coreset selection: exact greedy k-center over every training patch, or streamed (greedy per "
        "chunk of 8,192 patches, then over what the chunks kept: memory and work stay bounded); auto "
        "streams above 262,144 patches (256 images at 256x256).",
        choices=("auto", "exact", "streamed"),
    )
    num_neighbors: int = option(9, "Neighbours of a patch's nearest bank row that re-weight the image score.", low=1)
    batch_size: int = option(8, "Images per batch.", low=1)
