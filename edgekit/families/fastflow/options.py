"""FastFlow's own training options (``edgekit train --model fastflow``); torch-free, read by the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.families.base import option


@dataclass(frozen=True)
class FastflowOptions:
    epochs: int = option(10, "Epochs of gradient descent.", low=1)
    batch_size: int = option(8, "Images per batch.", low=1)
    learning_rate: float = option(1e-3, "Learning rate.", low=0.0, open_low=True)
