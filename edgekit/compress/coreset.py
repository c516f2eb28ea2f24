"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling), numpy only.

Farthest-point selection: start from one seeded random patch, then repeatedly add the patch
farthest from everything chosen so far. Distances are computed on a Johnson-Lindenstrauss random
projection (as in the PatchCore paper) to cut the cost; memory stays O(N·d) — one running
"distance to the nearest chosen centre" per patch, never an N×N matrix.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from edgekit.errors import EdgekitError


def coreset_indices(features: np.ndarray, count: int, *, projection_dims: Optional[int] = 128,
                    seed: int = 0, progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """Indices of ``count`` rows of ``features`` chosen by greedy k-center, in selection order.

    ``projection_dims=None`` (or ≥ the feature width) uses the features themselves.
    """
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) == 0:
        raise EdgekitError(f"coreset selection needs a non-empty (N, D) array, not {features.shape}")
    total = len(features)
    if not 1 <= count <= total:
        raise EdgekitError(f"coreset size must be between 1 and {total}, not {count}")
    rng = np.random.default_rng(seed)
    if projection_dims is not None and projection_dims < features.shape[1]:
        projection = rng.standard_normal((features.shape[1], projection_dims)).astype(np.float32)
        projection /= np.sqrt(np.float32(projection_dims))
        points = features @ projection
    else:
        points = features
    points = np.ascontiguousarray(points)
    sq_norms = np.einsum("ij,ij->i", points, points)
    chosen = np.empty(count, dtype=np.int64)
    chosen[0] = int(rng.integers(total))
    nearest_sq = np.full(total, np.inf, dtype=np.float32)
    step = max(1, count // 100)
    for i in range(1, count + 1):
        centre = points[chosen[i - 1]]
        sq = sq_norms - 2.0 * (points @ centre) + sq_norms[chosen[i - 1]]
        np.minimum(nearest_sq, sq, out=nearest_sq)
        if i == count:
            break
        chosen[i] = int(np.argmax(nearest_sq))
        if progress is not None and (i % step == 0):
            progress(i, count)
    if progress is not None:
        progress(count, count)
    return chosen


def coverage_radius(features: np.ndarray, indices: np.ndarray) -> float:
    """Largest distance from any feature row to its nearest selected row (lower is better)."""
    from edgekit.runtime.heads import nearest_neighbors

    distances, _ = nearest_neighbors(features, np.asarray(features)[indices])
    return float(distances.max())
