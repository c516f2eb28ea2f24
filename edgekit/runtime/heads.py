"""Score heads: what turns the network's raw output into an image score and an anomaly map.

numpy only; the training path and the device run the same head code on their own network
outputs, so the two can only differ by what the networks compute.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from edgekit.errors import EdgekitError

#: Largest distance matrix one chunk may hold (elements), so memory stays bounded.
_CHUNK_ELEMENTS = 1 << 22


def nearest_neighbors(queries: np.ndarray, bank: np.ndarray, *, bank_sq_norms: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest bank row for each query: (euclidean distances float64, indices int64).

    Candidates are ranked with one chunked matrix product (|q|² − 2 q·b + |b|², no N×M×D
    temporaries); the distance to the chosen neighbour is then recomputed directly in float64,
    so cancellation in the expansion cannot distort the score.
    """
    queries = np.asarray(queries, dtype=np.float32)
    bank = np.asarray(bank, dtype=np.float32)
    if bank_sq_norms is None:
        bank_sq_norms = np.einsum("ij,ij->i", bank, bank)
    indices = np.empty(len(queries), dtype=np.int64)
    rows = max(1, _CHUNK_ELEMENTS // max(1, len(bank)))
    for start in range(0, len(queries), rows):
        chunk = queries[start:start + rows]
        partial = bank_sq_norms[None, :] - 2.0 * (chunk @ bank.T)  # |q|² is constant per row
        indices[start:start + rows] = np.argmin(partial, axis=1)
    diff = queries.astype(np.float64) - bank[indices].astype(np.float64)
    return np.sqrt(np.einsum("ij,ij->i", diff, diff)), indices


def _bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out, in) matrix of bilinear up-sampling with half-pixel centres (align_corners=False)."""
    scale = in_size / out_size
    src = np.clip((np.arange(out_size) + 0.5) * scale - 0.5, 0, in_size - 1)
    low = np.floor(src).astype(int)
    high = np.minimum(low + 1, in_size - 1)
    frac = src - low
    matrix = np.zeros((out_size, in_size))
    matrix[np.arange(out_size), low] += 1 - frac
    matrix[np.arange(out_size), high] += frac
    return matrix


def _gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) matrix of a 1-D Gaussian blur with reflected borders (kernel 2·⌊4σ+0.5⌋+1)."""
    if sigma <= 0:
        return np.eye(size)
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    matrix = np.zeros((size, size))
    for offset, weight in zip(range(-radius, radius + 1), taps):
        cols = np.arange(size) + offset
        cols = np.abs(cols)  # reflect (without repeating the edge pixel)
        cols = np.where(cols >= size, 2 * (size - 1) - cols, cols)
        cols = np.clip(cols, 0, size - 1)
        np.add.at(matrix, (np.arange(size), cols), weight)
    return matrix


@dataclass
class KnnHead:
    """PatchCore's head: nearest-neighbour distance of every patch embedding to a memory bank.

    Image score: the largest patch distance, re-weighted as in the PatchCore paper by how
    isolated its nearest bank member is among its ``num_neighbors`` neighbours. Anomaly map: the
    patch-distance grid up-sampled bilinearly to the input size and smoothed with a Gaussian
    (σ = ``blur_sigma``). Both steps are linear, so they are folded into two small matrices.
    """

    memory_bank: np.ndarray
    num_neighbors: int
    output_height: int
    output_width: int
    blur_sigma: float = 4.0

    def __post_init__(self) -> None:
        bank = np.asarray(self.memory_bank)
        if bank.ndim != 2 or len(bank) == 0:
            raise EdgekitError(f"memory bank must be a non-empty 2-D array, not shape {bank.shape}")
        self.memory_bank = np.ascontiguousarray(bank, dtype=np.float32)
        self._bank_sq_norms = np.einsum("ij,ij->i", self.memory_bank, self.memory_bank)
        self._map_ops: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def from_params(cls, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *,
                    output_height: int, output_width: int) -> "KnnHead":
        return cls(memory_bank=arrays["memory_bank"], num_neighbors=int(params["num_neighbors"]),
                   output_height=output_height, output_width=output_width,
                   blur_sigma=float(params.get("blur_sigma", 4.0)))

    def _map_operators(self, grid_h: int, grid_w: int) -> tuple[np.ndarray, np.ndarray]:
        key = (grid_h, grid_w)
        if key not in self._map_ops:
            rows = _gaussian_matrix(self.output_height, self.blur_sigma) @ _bilinear_matrix(self.output_height, grid_h)
            cols = _gaussian_matrix(self.output_width, self.blur_sigma) @ _bilinear_matrix(self.output_width, grid_w)
            self._map_ops[key] = (rows, cols.T.copy())
        return self._map_ops[key]

    def __call__(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, D, h, w) embeddings → raw image scores (N,) float64 and maps (N, H, W) float32."""
        if embeddings.ndim != 4 or embeddings.shape[1] != self.memory_bank.shape[1]:
            raise EdgekitError(f"network output {embeddings.shape} does not match the memory bank "
                               f"width {self.memory_bank.shape[1]}")
        count, dims, grid_h, grid_w = embeddings.shape
        patches = embeddings.transpose(0, 2, 3, 1).reshape(-1, dims)
        distances, nearest = nearest_neighbors(patches, self.memory_bank, bank_sq_norms=self._bank_sq_norms)
        distances = distances.reshape(count, grid_h * grid_w)
        nearest = nearest.reshape(count, grid_h * grid_w)
        rows, cols = self._map_operators(grid_h, grid_w)
        scores = np.empty(count)
        maps = np.empty((count, self.output_height, self.output_width), dtype=np.float32)
        for i in range(count):
            worst = int(np.argmax(distances[i]))
            scores[i] = distances[i, worst] * self._isolation_weight(patches[i * grid_h * grid_w + worst],
                                                                     int(nearest[i, worst]))
            maps[i] = rows @ distances[i].reshape(grid_h, grid_w) @ cols
        return scores, maps

    def _isolation_weight(self, patch: np.ndarray, nearest_index: int) -> float:
        """1 − softmax weight of the nearest member among its own k nearest bank neighbours."""
        k = min(self.num_neighbors, len(self.memory_bank))
        if k <= 1:
            return 1.0
        anchor = self.memory_bank[nearest_index]
        to_anchor = self._bank_sq_norms - 2.0 * (self.memory_bank @ anchor) + self._bank_sq_norms[nearest_index]
        support = np.argpartition(to_anchor, k - 1)[:k]
        support = support[np.argsort(to_anchor[support], kind="stable")]
        if support[0] != nearest_index:  # ties: the anchor itself comes first
            support = np.concatenate([[nearest_index], support[support != nearest_index][:k - 1]])
        diff = self.memory_bank[support].astype(np.float64) - patch.astype(np.float64)
        dist = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        softmax = np.exp(dist - dist.max())
        softmax /= softmax.sum()
        return float(1.0 - softmax[0])


HEADS = {"knn": KnnHead}


def build_head(kind: str, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *,
               output_height: int, output_width: int):
    """Construct the head a manifest names."""
    if kind not in HEADS:
        raise EdgekitError(f"unknown head {kind!r}; this edgekit knows {sorted(HEADS)}")
    return HEADS[kind].from_params(params, arrays, output_height=output_height, output_width=output_width)
