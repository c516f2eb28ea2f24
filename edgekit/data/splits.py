"""The seeded split of normal images into the ones a model learns from and the held-out ones."""

from __future__ import annotations

import numpy as np

from edgekit.errors import EdgekitError


def split_normals(count: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``count`` normal images into (bank indices, held-out indices), both sorted."""
    if not 0 < holdout < 1:
        raise EdgekitError(f"the held-out share must be between 0 and 1, not {holdout}")
    held = max(2, int(round(count * holdout)))
    if count - held < 2:
        raise EdgekitError(f"need at least {held + 2} normal images to hold {held} out for thresholds; found {count}")
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[held:]), np.sort(order[:held])
