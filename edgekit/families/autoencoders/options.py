"""The autoencoders' own training options (``edgekit train --model sae|dae``); torch-free, read by the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.families.base import option


@dataclass(frozen=True)
class SaeOptions:
    epochs: int = option(20, "Epochs of gradient descent.", low=1)
    batch_size: int = option(8, "Images per batch.", low=2)
    learning_rate: float = option(3e-3, "Learning rate.", low=0.0, open_low=True)


@dataclass(frozen=True)
class DaeOptions:
    epochs: int = option(10, "Epochs of gradient descent.", low=1)
    batch_size: int = option(8, "Images per batch.", low=2)
    learning_rate: float = option(1e-3, "Learning rate.", low=0.0, open_low=True)
