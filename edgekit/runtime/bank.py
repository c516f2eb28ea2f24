"""A kNN memory bank on the device: how it is stored in a bundle and the exact nearest-neighbour search.

numpy only (faiss optional). The runtime's kNN head reads banks with it; training, export and
``edgekit fit`` (through edgekit.compress) write banks and select coresets with the same code.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.threads import HeadPool, split

#: Largest distance matrix one chunk may hold (elements), so memory stays bounded.
_CHUNK_ELEMENTS = 1 << 22
#: How a bank may be stored in a bundle (head param ``bank.dtype``).
BANK_DTYPES = ("float32", "float16", "int8")
#: Candidates per query ranked in float32 before the exact float64 pick (see nearest_neighbors).
_CANDIDATES = 2


def encode_bank(bank: np.ndarray, dtype: str) -> dict[str, np.ndarray]:
    """The bank as head arrays: ``memory_bank`` in ``dtype`` (+ ``bank_scale``/``bank_offset`` for int8).

    int8 is affine per dimension: ``value = offset + scale * q``, q in [-128, 127], the range of
    each dimension mapped onto all 256 levels. (Symmetric scaling would waste up to half the
    levels on dimensions that are not centred, e.g. the non-negative un-projected features.)
    The round-trip error of every value is at most ``scale / 2``.
    """
    bank = np.asarray(bank, dtype=np.float32)
    if dtype == "float32":
        return {"memory_bank": np.ascontiguousarray(bank)}
    if dtype == "float16":
        largest = float(np.abs(bank).max()) if bank.size else 0.0
        if largest > float(np.finfo(np.float16).max):
            raise EdgekitError(f"bank values up to {largest:.4g} do not fit float16; use float32 or int8")
        return {"memory_bank": bank.astype(np.float16)}
    if dtype == "int8":
        low, high = bank.min(axis=0).astype(np.float64), bank.max(axis=0).astype(np.float64)
        scale = ((high - low) / 255.0).astype(np.float32)
        scale[scale <= 0] = 1.0  # a constant dimension: every row decodes to ``low`` exactly
        offset = (low + 128.0 * scale.astype(np.float64)).astype(np.float32)
        levels = np.rint((bank - offset) / scale)
        return {"memory_bank": np.clip(levels, -128, 127).astype(np.int8), "bank_scale": scale, "bank_offset": offset}
    raise EdgekitError(f"bank dtype must be one of {', '.join(BANK_DTYPES)}, not {dtype!r}")


def decode_bank(arrays: Mapping[str, np.ndarray], dtype: str) -> np.ndarray:
    """float32 (N, D) bank from the head arrays ``encode_bank`` wrote; checks they say the same."""
    if dtype not in BANK_DTYPES:
        raise EdgekitError(f"the manifest names bank dtype {dtype!r}; this edgekit knows {', '.join(BANK_DTYPES)}")
    if "memory_bank" not in arrays:
        raise EdgekitError("the head has no memory_bank array")
    bank = np.asarray(arrays["memory_bank"])
    if bank.dtype != np.dtype(dtype):
        raise EdgekitError(f"the memory bank is stored as {bank.dtype}, the manifest says {dtype}")
    if bank.ndim != 2 or len(bank) == 0:
        raise EdgekitError(f"memory bank must be a non-empty 2-D array, not shape {bank.shape}")
    if dtype != "int8":
        return np.ascontiguousarray(bank, dtype=np.float32)
    scale, offset = arrays.get("bank_scale"), arrays.get("bank_offset")
    if scale is None or offset is None:
        raise EdgekitError("an int8 memory bank needs its bank_scale and bank_offset arrays")
    if np.shape(scale) != (bank.shape[1],) or np.shape(offset) != (bank.shape[1],):
        raise EdgekitError(f"bank_scale/bank_offset must have one value per bank dimension ({bank.shape[1]})")
    return np.ascontiguousarray(
        np.asarray(offset, np.float32) + np.asarray(scale, np.float32) * bank.astype(np.float32)
    )


class FaissSearch:
    """Candidate search with faiss's exact ``IndexFlatL2`` (optional: only where faiss is installed)."""

    def __init__(self, bank: np.ndarray) -> None:
        try:
            import faiss
        except ImportError:
            raise EdgekitError("kNN search 'faiss' needs faiss: pip install faiss-cpu") from None
        self.index = faiss.IndexFlatL2(bank.shape[1])
        self.index.add(np.ascontiguousarray(bank, dtype=np.float32))

    def candidates(self, queries: np.ndarray, count: int) -> np.ndarray:
        _, found = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), count)
        return found.astype(np.int64)


def _numpy_candidates(chunk: np.ndarray, bank: np.ndarray, bank_sq_norms: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` (≤ 2) best bank rows per query by one matrix product (|q|² is constant per row)."""
    partial = bank_sq_norms[None, :] - 2.0 * (chunk @ bank.T)
    rows = np.arange(len(chunk))
    found = np.empty((len(chunk), count), dtype=np.int64)
    for column in range(count):  # repeated argmin: far cheaper than argpartition for two
        found[:, column] = np.argmin(partial, axis=1)
        partial[rows, found[:, column]] = np.inf
    return found


def _rows_per_chunk(bank_rows: int, width: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(bank_rows, width))  # bounds the distance matrix and the gathers


def _run_parts(function, total: int, rows: int, pool: Optional[HeadPool]) -> None:
    pieces = max(pool.chunks(total) if pool is not None else 1, -(-total // rows))
    parts = split(total, pieces)
    if pool is not None and len(parts) > 1:
        pool.map(function, parts)
    else:
        for part in parts:
            function(part)


def nearest_distances(
    queries: np.ndarray,
    bank_t: np.ndarray,
    bank: np.ndarray,
    half_sq_norms: np.ndarray,
    *,
    search: "FaissSearch | None" = None,
    pool: Optional[HeadPool] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The head's fast search: one float32 candidate per query, its distance recomputed in float64.

    ``bank_t`` is the bank transposed (D, N) and ``half_sq_norms`` |b|²/2, both made once. The
    candidate minimises |b|²/2 − q·b (one product and one pass over it, in place); it differs from
    the exact nearest row only where two rows are within float32 rounding of each other, and then
    its distance differs from the exact one by that rounding. ``nearest_neighbors`` settles such ties
    exactly (two candidates) and is 1.6× slower; the kNN head uses it for each image's worst patch.
    """
    distances = np.empty(len(queries))
    indices = np.empty(len(queries), dtype=np.int64)

    def search_rows(part: slice) -> None:
        chunk = queries[part]
        if search is not None:
            found = search.candidates(chunk, 1)[:, 0]
        else:
            partial = chunk @ bank_t
            np.subtract(half_sq_norms, partial, out=partial)
            found = np.argmin(partial, axis=1)
        diff = chunk.astype(np.float64) - bank[found]
        distances[part] = np.sqrt(np.einsum("nd,nd->n", diff, diff))
        indices[part] = found

    _run_parts(search_rows, len(queries), _rows_per_chunk(len(bank), bank.shape[1]), pool)
    return distances, indices


def nearest_neighbors(
    queries: np.ndarray,
    bank: np.ndarray,
    *,
    bank_sq_norms: np.ndarray | None = None,
    search: "FaissSearch | None" = None,
    pool: Optional[HeadPool] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest bank row for each query: (euclidean distances float64, indices int64).

    The two best candidates are ranked in float32 by a chunked matrix product (|q|² − 2 q·b + |b|²,
    no N×M×D temporaries) or by faiss; the winner is then picked by the distance recomputed
    directly in float64 (ties: the lower index). Rounding in the expansion can neither distort a
    score nor make the numpy and faiss searches disagree. ``pool`` searches row chunks in parallel.
    """
    queries = np.asarray(queries, dtype=np.float32)
    bank = np.asarray(bank, dtype=np.float32)
    if bank_sq_norms is None:
        bank_sq_norms = np.einsum("ij,ij->i", bank, bank)
    count = min(_CANDIDATES, len(bank))
    distances = np.empty(len(queries))
    indices = np.empty(len(queries), dtype=np.int64)

    def search_rows(part: slice) -> None:
        chunk = queries[part]
        found = (
            search.candidates(chunk, count)
            if search is not None
            else _numpy_candidates(chunk, bank, bank_sq_norms, count)
        )
        diff = chunk.astype(np.float64)[:, None, :] - bank[found].astype(np.float64)
        exact = np.sqrt(np.einsum("nkd,nkd->nk", diff, diff))
        order = np.lexsort((found, exact), axis=-1)[:, 0]  # by distance, then by index
        picked = np.arange(len(chunk))
        distances[part] = exact[picked, order]
        indices[part] = found[picked, order]

    _run_parts(search_rows, len(queries), _rows_per_chunk(len(bank), count * bank.shape[1]), pool)
    return distances, indices
