"""Reverse Distillation's own training options (``edgekit train --model reverse_distillation``); torch-free, read by the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.families.base import option


@dataclass(frozen=True)
class ReverseDistillationOptions:
    epochs: int = option(5, "Epochs of gradient descent.", low=1)
    batch_size: int = option(8, "Images per batch.", low=2)
    learning_rate: float = option(0.005, "Learning rate.", low=0.0, open_low=True)
