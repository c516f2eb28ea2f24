"""EfficientAD's and its PDN teacher's own training options (``edgekit train --model efficient_ad|pdn-teacher``);
torch-free, read by the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgekit.families.base import option


@dataclass(frozen=True)
class EfficientAdOptions:
    epochs: int = option(1, "Epochs of gradient descent.", low=1)
    batch_size: int = option(1, "Images per batch.", low=1)
    learning_rate: float = option(1e-3, "Learning rate.", low=0.0, open_low=True)
    teacher_weights: Optional[Path] = option(
        None,
        "A PDN teacher's weights: anomalib's pretrained_teacher_small.pth "
        "or a pdn-teacher run (default: edgekit's distilled offline teacher).",
    )


@dataclass(frozen=True)
class PdnTeacherOptions:
    epochs: int = option(4, "Epochs of gradient descent.", low=1)
    batch_size: int = option(8, "Images per batch.", low=1)
    learning_rate: float = option(1e-3, "Learning rate.", low=0.0, open_low=True)
