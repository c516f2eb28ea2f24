"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling), numpy only.

Farthest-point selection: start from one seeded random patch, then repeatedly add the patch
farthest from everything chosen so far. Distances are computed on a Johnson-Lindenstrauss random
projection (as in the PatchCore paper) to cut the cost; memory stays O(N·d) — one running
"distance to the nearest chosen centre" per patch, never an N×N matrix.

``StreamedCoreset`` does the same in two levels for training sets too large to hold: each chunk
of patches keeps its own greedy selection, then greedy over the kept rows picks the bank. By the
triangle inequality every patch lies within (largest chunk radius + the second level's radius) of
a bank row, on the projection; both radii are measured, so that bound is a fact about this run.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import numpy as np

from edgekit.errors import EdgekitError

Progress = Optional[Callable[[int, int], None]]


def coreset_indices(features: np.ndarray, count: int, **options: Any) -> np.ndarray:
    """Indices of ``count`` rows of ``features`` chosen by greedy k-center, in selection order
    (``select_coreset`` without the radius)."""
    return select_coreset(features, count, **options)[0]


def select_coreset(
    features: np.ndarray,
    count: int,
    *,
    projection_dims: Optional[int] = 128,
    seed: int = 0,
    progress: Progress = None,
    covered_by: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, float]:
    """Indices of ``count`` rows of ``features`` chosen by greedy k-center, in selection order, and
    the coverage radius they reach on the projection.

    ``projection_dims=None`` (or ≥ the feature width) uses the features themselves.
    ``covered_by``: rows already in the set (e.g. an existing bank being extended); selection
    continues from them, starting with the feature farthest from all of them.
    """
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) == 0:
        raise EdgekitError(f"coreset selection needs a non-empty (N, D) array, not {features.shape}")
    total = len(features)
    if not 1 <= count <= total:
        raise EdgekitError(f"coreset size must be between 1 and {total}, not {count}")
    if covered_by is not None:
        covered_by = np.asarray(covered_by, dtype=np.float32)
        if covered_by.ndim != 2 or covered_by.shape[1] != features.shape[1] or len(covered_by) == 0:
            raise EdgekitError(
                f"rows already selected must be a non-empty (M, {features.shape[1]}) array, not {covered_by.shape}"
            )
    rng = np.random.default_rng(seed)
    projection = random_projection(features.shape[1], projection_dims, rng)
    points = features if projection is None else features @ projection
    nearest_sq = None
    if covered_by is not None:
        from edgekit.runtime.bank import nearest_neighbors

        covered_points = covered_by if projection is None else covered_by @ projection
        distances, _ = nearest_neighbors(points, covered_points)
        nearest_sq = (distances**2).astype(np.float32)
    return greedy_k_center(points, count, rng, nearest_sq=nearest_sq, progress=progress)


def random_projection(dims: int, projection_dims: Optional[int], rng: np.random.Generator) -> Optional[np.ndarray]:
    """A (dims, projection_dims) Gaussian projection scaled to keep distances; None when it would not shrink."""
    if projection_dims is None or projection_dims >= dims:
        return None
    projection = rng.standard_normal((dims, projection_dims)).astype(np.float32)
    projection /= np.sqrt(np.float32(projection_dims))
    return projection


def greedy_k_center(
    points: np.ndarray,
    count: int,
    rng: np.random.Generator,
    *,
    nearest_sq: Optional[np.ndarray] = None,
    progress: Progress = None,
) -> tuple[np.ndarray, float]:
    """Greedy k-center on ``points`` (N, d): ``count`` indices in selection order and the coverage
    radius they reach (the largest distance from a point to its nearest chosen one).

    ``nearest_sq``: squared distances to rows chosen before (selection continues from them); None
    starts from a random point drawn from ``rng``.
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    total = len(points)
    sq_norms = np.einsum("ij,ij->i", points, points)
    chosen = np.empty(count, dtype=np.int64)
    if nearest_sq is None:
        chosen[0] = int(rng.integers(total))
        nearest_sq = np.full(total, np.inf, dtype=np.float32)
    else:
        chosen[0] = int(np.argmax(nearest_sq))
    step = max(1, count // 100)
    sq = np.empty(total, dtype=np.float32)
    for i in range(1, count + 1):
        # |p|² − 2 p·c + |c|² in one reused buffer; einsum, not BLAS: a matrix-vector product is
        # memory-bound, and BLAS threads contending with other processes made it 3-4x slower here
        np.einsum("ij,j->i", points, points[chosen[i - 1]], out=sq)
        sq *= -2.0
        sq += sq_norms
        sq += sq_norms[chosen[i - 1]]
        np.minimum(nearest_sq, sq, out=nearest_sq)
        if i == count:
            break
        chosen[i] = int(np.argmax(nearest_sq))
        if progress is not None and (i % step == 0):
            progress(i, count)
    if progress is not None:
        progress(count, count)
    return chosen, float(np.sqrt(max(float(nearest_sq.max()), 0.0)))


class StreamedCoreset:
    """Greedy k-center in two levels over patches that arrive in batches (``add``), then ``finish``.

    Each chunk of ``chunk_rows`` patches keeps its greedy ``oversample × count × chunk / total``
    rows; greedy over everything kept picks ``count``. Memory holds one chunk and the kept rows,
    never the training set; the work grows with the patches (linearly), not with their square.
    """

    def __init__(
        self,
        total: int,
        count: int,
        dims: int,
        *,
        chunk_rows: int = 65536,
        oversample: float = 4.0,
        projection_dims: Optional[int] = 128,
        seed: int = 0,
    ) -> None:
        if not 1 <= count <= total:
            raise EdgekitError(f"coreset size must be between 1 and {total}, not {count}")
        self.total, self.count, self.oversample = int(total), int(count), float(oversample)
        self.rng = np.random.default_rng(seed)
        self.projection = random_projection(dims, projection_dims, self.rng)
        self.buffer = np.empty((int(chunk_rows), dims), dtype=np.float32)
        self.filled = self.seen = 0
        self.kept_rows: list[np.ndarray] = []
        self.kept_points: list[np.ndarray] = []
        self.chunk_radius = 0.0
        self.first_level_seconds = 0.0

    def add(self, rows: np.ndarray) -> None:
        """Take (n, dims) patches; every full chunk is reduced to its own greedy selection."""
        rows = np.asarray(rows, dtype=np.float32)
        start = 0
        while start < len(rows):
            take = min(len(rows) - start, len(self.buffer) - self.filled)
            self.buffer[self.filled : self.filled + take] = rows[start : start + take]
            self.filled += take
            start += take
            if self.filled == len(self.buffer):
                self._reduce()

    def _reduce(self) -> None:
        started = time.perf_counter()
        chunk = self.buffer[: self.filled]
        points = chunk if self.projection is None else chunk @ self.projection
        keep = min(self.filled, max(1, math.ceil(self.oversample * self.count * self.filled / self.total)))
        chosen, radius = greedy_k_center(points, keep, self.rng)
        self.kept_rows.append(chunk[chosen].copy())
        self.kept_points.append(np.ascontiguousarray(points[chosen]))
        self.chunk_radius = max(self.chunk_radius, radius)
        self.seen += self.filled
        self.filled = 0
        self.first_level_seconds += time.perf_counter() - started

    def finish(self, progress: Progress = None) -> tuple[np.ndarray, dict]:
        """The bank (count, dims) in selection order, and what the selection measured: chunks,
        rows kept by the first level, both radii and their sum (the coverage bound). The first
        level's time is ``first_level_seconds``."""
        if self.filled:
            self._reduce()
        if self.seen != self.total:
            raise EdgekitError(f"the coreset was promised {self.total} patches but got {self.seen}")
        rows, points = np.concatenate(self.kept_rows), np.concatenate(self.kept_points)
        if len(rows) <= self.count:
            chosen, radius = np.arange(len(rows)), 0.0
        else:
            chosen, radius = greedy_k_center(points, self.count, self.rng, progress=progress)
        info = {
            "chunks": len(self.kept_rows),
            "first_level_rows": int(len(rows)),
            "chunk_radius": round(self.chunk_radius, 6),
            "second_level_radius": round(radius, 6),
            "radius_bound": round(self.chunk_radius + radius, 6),
        }
        return rows[chosen], info


#: The most rows ``--coreset-ratio`` keeps: the bank, and the device's kNN work, stop growing with
#: the training set there (at 256² images, from 160 training images on).
MAX_RATIO_ROWS = 16384


def coreset_count(patches: int, ratio: float, *, rows: Optional[int] = None) -> int:
    """Rows a coreset keeps out of ``patches``, as training does: ``rows`` when given (a fixed bank:
    greedy selection's work is then linear in the patches), else ``ratio`` of them up to
    MAX_RATIO_ROWS; at least one."""
    if rows is not None:
        return max(1, min(int(rows), patches))
    return max(1, min(int(patches * ratio), MAX_RATIO_ROWS))


def coverage_radius(features: np.ndarray, indices: np.ndarray) -> float:
    """Largest distance from any feature row to its nearest selected row (lower is better)."""
    from edgekit.runtime.bank import nearest_neighbors

    distances, _ = nearest_neighbors(features, np.asarray(features)[indices])
    return float(distances.max())
