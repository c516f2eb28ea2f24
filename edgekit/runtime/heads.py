"""Score heads: what turns the network's raw output into an image score and an anomaly map.

numpy only; the training path and the device run the same head code on their own network
outputs, so the two can only differ by what the networks compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.bank import BANK_DTYPES, FaissSearch, decode_bank, nearest_distances, nearest_neighbors
from edgekit.runtime.threads import HeadPool, split

#: Ranges of the head parameters a manifest sets (σ in output pixels: the blur builds side×side operators).
MAX_BLUR_SIGMA = 64.0
MAX_NUM_NEIGHBORS = 1024
#: Patches within this relative distance of an image's largest (fast search) get the exact search.
_WORST_BAND = 1e-3
_REQUIRED = object()
_KIND_WORDS = {int: "an integer", float: "a number", str: "a string", dict: "an object"}


def head_param(
    params: Mapping[str, Any],
    name: str,
    kind: type,
    default: Any = _REQUIRED,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple = (),
) -> Any:
    """One head parameter from a manifest, its type and range checked: a bad one is one clear line."""
    if not isinstance(params, Mapping):
        raise EdgekitError(f"head params must be an object, not {type(params).__name__}")
    if name not in params:
        if default is _REQUIRED:
            raise EdgekitError(f"head param '{name}' is missing")
        return default
    value = params[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, kind) or (kind is float and not math.isfinite(value)):
        raise EdgekitError(f"head param '{name}' must be {_KIND_WORDS[kind]}, not {value!r}")
    if choices and value not in choices:
        raise EdgekitError(f"head param '{name}' must be one of {', '.join(map(str, choices))}, not {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise EdgekitError(f"head param '{name}' must be from {low} to {high}, not {value!r}")
    return value


def _serial(function, items) -> None:
    for item in items:
        function(item)


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
    Every patch goes through the fast search (one float32 candidate); the patches within
    ``_WORST_BAND`` of the image's largest distance are searched again exactly, so the image score
    is exact search's and the map's other values differ from it by float32 rounding at most
    (``exact=True`` searches every patch exactly).
    """

    memory_bank: np.ndarray
    num_neighbors: int
    output_height: int
    output_width: int
    blur_sigma: float = 4.0
    search: str = "numpy"  # "numpy", or "faiss" where installed (identical results)
    exact: bool = False  # every patch through the exact search: the reference, 1.6× slower

    def __post_init__(self) -> None:
        bank = np.asarray(self.memory_bank)
        if bank.ndim != 2 or len(bank) == 0:
            raise EdgekitError(f"memory bank must be a non-empty 2-D array, not shape {bank.shape}")
        self.memory_bank = np.ascontiguousarray(bank, dtype=np.float32)
        self._bank_sq_norms = np.einsum("ij,ij->i", self.memory_bank, self.memory_bank)
        self._half_sq_norms = (self._bank_sq_norms / 2).astype(np.float32)
        self._bank_t = np.ascontiguousarray(self.memory_bank.T)
        self._map_ops: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        if self.search not in ("numpy", "faiss"):
            raise EdgekitError(f"kNN search must be 'numpy' or 'faiss', not {self.search!r}")
        self._faiss = FaissSearch(self.memory_bank) if self.search == "faiss" else None

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        *,
        output_height: int,
        output_width: int,
        search: str = "numpy",
    ) -> "KnnHead":
        """The head a manifest describes; the bank is decoded (dequantized) to float32 once, here."""
        bank = head_param(params, "bank", dict, {})
        dtype = head_param(bank, "dtype", str, "float32", choices=BANK_DTYPES)
        return cls(
            memory_bank=decode_bank(arrays, dtype),
            num_neighbors=head_param(params, "num_neighbors", int, low=1, high=MAX_NUM_NEIGHBORS),
            output_height=output_height,
            output_width=output_width,
            blur_sigma=head_param(params, "blur_sigma", float, 4.0, low=0.0, high=MAX_BLUR_SIGMA),
            search=search,
        )

    def _map_operators(self, grid_h: int, grid_w: int) -> tuple[np.ndarray, np.ndarray]:
        key = (grid_h, grid_w)
        if key not in self._map_ops:
            rows = _gaussian_matrix(self.output_height, self.blur_sigma) @ _bilinear_matrix(self.output_height, grid_h)
            cols = _gaussian_matrix(self.output_width, self.blur_sigma) @ _bilinear_matrix(self.output_width, grid_w)
            self._map_ops[key] = (rows, cols.T.copy())
        return self._map_ops[key]

    def __call__(self, embeddings: np.ndarray, *, pool: Optional[HeadPool] = None) -> tuple[np.ndarray, np.ndarray]:
        """(N, D, h, w) embeddings → raw image scores (N,) float64 and maps (N, H, W) float32.
        ``pool``: threads that share the search (results are identical with or without)."""
        if embeddings.ndim != 4 or embeddings.shape[1] != self.memory_bank.shape[1]:
            raise EdgekitError(
                f"network output {embeddings.shape} does not match the memory bank width {self.memory_bank.shape[1]}"
            )
        count, dims, grid_h, grid_w = embeddings.shape
        patches = embeddings.transpose(0, 2, 3, 1).reshape(-1, dims)
        if self.exact:
            distances, nearest = nearest_neighbors(
                patches, self.memory_bank, bank_sq_norms=self._bank_sq_norms, search=self._faiss, pool=pool
            )
        else:
            distances, nearest = nearest_distances(
                patches, self._bank_t, self.memory_bank, self._half_sq_norms, search=self._faiss, pool=pool
            )
        distances = distances.reshape(count, grid_h * grid_w)
        nearest = nearest.reshape(count, grid_h * grid_w)
        rows, cols = self._map_operators(grid_h, grid_w)
        scores = np.empty(count)
        maps = np.empty((count, self.output_height, self.output_width), dtype=np.float32)
        for i in range(count):
            image_patches = patches[i * grid_h * grid_w : (i + 1) * grid_h * grid_w]
            if not self.exact:  # the fast search never under-states a distance: the worst patch is in the band
                band = np.flatnonzero(distances[i] >= distances[i].max() * (1.0 - _WORST_BAND))
                distances[i, band], nearest[i, band] = nearest_neighbors(
                    image_patches[band], self.memory_bank, bank_sq_norms=self._bank_sq_norms, search=self._faiss
                )
            worst = int(np.argmax(distances[i]))
            scores[i] = distances[i, worst] * self._isolation_weight(image_patches[worst], int(nearest[i, worst]))
            maps[i] = rows @ distances[i].reshape(grid_h, grid_w) @ cols
        return scores, maps

    def cost(self, grid_h: int, grid_w: int) -> tuple[int, int]:
        """(FLOPs, bytes touched) of one image through this head: for labelled roofline estimates.

        FLOPs: the distance product 2·P·R·D and one pass over it, the float64 distance of each
        patch's candidate, the exact search of the worst patch, the isolation weight (one R×D
        product) and the two map products. Bytes: the float32 bank and its
        norms, the patch embeddings, the map operators and the map, each read or written once."""
        rows, dims = self.memory_bank.shape
        patches = grid_h * grid_w
        height, width = self.output_height, self.output_width
        flops = (
            2 * patches * rows * dims
            + patches * rows
            + 3 * patches * dims
            + 4 * rows * dims
            + 2 * height * grid_h * grid_w
            + 2 * height * grid_w * width
        )
        touched = 4 * (rows * dims + rows + patches * dims + height * grid_h + grid_w * width + height * width)
        return int(flops), int(touched)

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
            support = np.concatenate([[nearest_index], support[support != nearest_index][: k - 1]])
        diff = self.memory_bank[support].astype(np.float64) - patch.astype(np.float64)
        dist = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        softmax = np.exp(dist - dist.max())
        softmax /= softmax.sum()
        return float(1.0 - softmax[0])


#: Image-score rules a :class:`MapHead` offers (head param ``score``).
MAP_SCORES = ("max", "mean", "top_mean")


@dataclass
class MapHead:
    """The head of families whose network outputs an anomaly map itself (the autoencoders' per-pixel
    squared error, STFPM, FastFlow, Reverse Distillation, EfficientAD).

    Map: the network's (N, 1, h, w) or (N, h, w) output, up-sampled bilinearly (half-pixel
    centres, as ``torch.nn.functional.interpolate(align_corners=False)``) to the input size when
    h, w differ from it, then smoothed with a Gaussian of ``blur_sigma`` output pixels (reflected
    borders; 0 = no blur). Both steps are linear and folded into two small matrices, as in KnnHead.
    Image score, read off that final map by the rule ``score``:
      ``max``       the largest map value;
      ``mean``      the mean over all pixels;
      ``top_mean``  the mean of the largest ``top_fraction`` of the pixels (at least one).
    Computed in float64; maps are returned as float32.
    """

    output_height: int
    output_width: int
    score: str = "max"
    top_fraction: float = 0.01
    blur_sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.score not in MAP_SCORES:
            raise EdgekitError(f"map head score must be one of {', '.join(MAP_SCORES)}, not {self.score!r}")
        if not 0 < self.top_fraction <= 1:
            raise EdgekitError(f"map head top_fraction must be in (0, 1], not {self.top_fraction}")
        if self.blur_sigma < 0:
            raise EdgekitError(f"map head blur_sigma must be 0 or more, not {self.blur_sigma}")
        self._map_ops: dict[tuple[int, int], "tuple[np.ndarray, np.ndarray] | None"] = {}

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        *,
        output_height: int,
        output_width: int,
        **options: Any,
    ) -> "MapHead":
        """The head a manifest describes (it has no arrays; device options such as ``search`` do not apply)."""
        return cls(
            output_height=output_height,
            output_width=output_width,
            score=head_param(params, "score", str, "max", choices=MAP_SCORES),
            top_fraction=head_param(params, "top_fraction", float, 0.01, low=0.0, high=1.0),
            blur_sigma=head_param(params, "blur_sigma", float, 0.0, low=0.0, high=MAX_BLUR_SIGMA),
        )

    @property
    def params(self) -> dict[str, Any]:
        """What ``from_params`` reads back: the manifest's head params."""
        return {"score": self.score, "top_fraction": self.top_fraction, "blur_sigma": self.blur_sigma}

    def _map_operators(self, grid_h: int, grid_w: int) -> "tuple[np.ndarray, np.ndarray] | None":
        """(rows, cols) with final = rows @ map @ cols, or None when the map is used as it is."""
        key = (grid_h, grid_w)
        if key not in self._map_ops:
            same = (grid_h, grid_w) == (self.output_height, self.output_width)
            if same and self.blur_sigma == 0:
                self._map_ops[key] = None
            else:
                rows = _gaussian_matrix(self.output_height, self.blur_sigma) @ _bilinear_matrix(
                    self.output_height, grid_h
                )
                cols = _gaussian_matrix(self.output_width, self.blur_sigma) @ _bilinear_matrix(
                    self.output_width, grid_w
                )
                self._map_ops[key] = (rows, cols.T.copy())
        return self._map_ops[key]

    def _image_score(self, final: np.ndarray) -> float:
        values = final.ravel()
        if self.score == "max":
            return float(values.max())
        if self.score == "mean":
            return float(values.mean())
        count = max(1, int(round(self.top_fraction * values.size)))
        return float(np.partition(values, values.size - count)[values.size - count :].mean())

    def __call__(self, outputs: np.ndarray, *, pool: Optional[HeadPool] = None) -> tuple[np.ndarray, np.ndarray]:
        """(N, 1, h, w) or (N, h, w) network maps → raw image scores (N,) float64 and maps (N, H, W) float32.
        ``pool``: threads that share the images of a batch."""
        maps = np.asarray(outputs)
        if maps.ndim == 4 and maps.shape[1] == 1:
            maps = maps[:, 0]
        if maps.ndim != 3 or 0 in maps.shape:
            raise EdgekitError(f"a map head needs network output (N, 1, h, w) or (N, h, w), not {np.shape(outputs)}")
        count, grid_h, grid_w = maps.shape
        operators = self._map_operators(grid_h, grid_w)
        scores = np.empty(count)
        final_maps = np.empty((count, self.output_height, self.output_width), dtype=np.float32)

        def one(i: int) -> None:
            final = maps[i].astype(np.float64)
            if operators is not None:
                final = operators[0] @ final @ operators[1]
            scores[i] = self._image_score(final)
            final_maps[i] = final

        (pool.map if pool is not None else _serial)(one, range(count))
        return scores, final_maps

    def cost(self, grid_h: int, grid_w: int) -> tuple[int, int]:
        """(FLOPs, bytes touched) of one image through this head: for labelled roofline estimates.

        FLOPs: the two map products (none when the map is used as it is) and one pass over the
        final map for the score. Bytes: the float32 network map, the operators and the final map."""
        height, width = self.output_height, self.output_width
        flops, touched = height * width, 4 * (grid_h * grid_w + height * width)
        if self._map_operators(grid_h, grid_w) is not None:
            flops += 2 * height * grid_h * grid_w + 2 * height * grid_w * width
            touched += 4 * (height * grid_h + grid_w * width)
        return int(flops), int(touched)


#: How Σ⁻¹ may be stored in a bundle (head param ``dtype``). float16 is safe: every entry of
#: (Σ + εI)⁻¹ is at most 1/ε in magnitude (100 for PaDiM's ε = 0.01), far inside float16's range.
MAHALANOBIS_DTYPES = ("float32", "float16")


@dataclass
class MahalanobisHead:
    """PaDiM's head: the Mahalanobis distance of each grid position's embedding to that position's
    Gaussian of the training normals, sqrt((x − μ)ᵀ Σ⁻¹ (x − μ)).

    ``mean`` is (P, d) and ``inv_covariance`` (P, d, d), P = h·w positions in row-major order,
    both float32 (Σ already holds its regularisation). The distance grid becomes the anomaly map
    and image score exactly as a :class:`MapHead` with ``score="max"`` makes them: bilinear
    up-sampling to the input size, Gaussian blur (σ = ``blur_sigma``), image score = map maximum.
    The distances are computed in float32 (one d×d product per position, batched over images).
    """

    mean: np.ndarray
    inv_covariance: np.ndarray
    output_height: int
    output_width: int
    blur_sigma: float = 4.0

    def __post_init__(self) -> None:
        mean, inverse = np.asarray(self.mean), np.asarray(self.inv_covariance)
        if mean.ndim != 2 or inverse.shape != (*mean.shape, mean.shape[1]) or 0 in mean.shape:
            raise EdgekitError(
                f"Mahalanobis head needs mean (P, d) and inv_covariance (P, d, d), not {mean.shape} and {inverse.shape}"
            )
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.inv_covariance = np.ascontiguousarray(inverse, dtype=np.float32)
        self._maps = MapHead(
            output_height=self.output_height, output_width=self.output_width, score="max", blur_sigma=self.blur_sigma
        )

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        *,
        output_height: int,
        output_width: int,
        **options: Any,
    ) -> "MahalanobisHead":
        """The head a manifest describes; Σ⁻¹ stored as param ``dtype`` (float32 or float16) is
        widened to float32 once, here. Device options such as ``search`` do not apply."""
        missing = [name for name in ("mean", "inv_covariance") if name not in arrays]
        if missing:
            raise EdgekitError(f"the Mahalanobis head has no {missing[0]} array")
        dtype = head_param(params, "dtype", str, "float32", choices=MAHALANOBIS_DTYPES)
        if np.asarray(arrays["inv_covariance"]).dtype != np.dtype(dtype):
            raise EdgekitError(
                f"inv_covariance is stored as {np.asarray(arrays['inv_covariance']).dtype}, the manifest says {dtype}"
            )
        return cls(
            mean=arrays["mean"],
            inv_covariance=arrays["inv_covariance"],
            output_height=output_height,
            output_width=output_width,
            blur_sigma=head_param(params, "blur_sigma", float, 4.0, low=0.0, high=MAX_BLUR_SIGMA),
        )

    def distances(self, embeddings: np.ndarray, *, pool: Optional[HeadPool] = None) -> np.ndarray:
        """(N, d, h, w) embeddings → (N, h, w) float32 Mahalanobis distances (``pool``: threads
        that share the grid positions)."""
        positions, dims = self.mean.shape
        shape = np.shape(embeddings)
        if len(shape) != 4 or shape[1] != dims or shape[2] * shape[3] != positions:
            raise EdgekitError(
                f"network output {shape} does not match the Gaussians ({positions} positions of {dims} dimensions)"
            )
        count, _, grid_h, grid_w = shape
        vectors = np.asarray(embeddings, np.float32).reshape(count, dims, positions).transpose(2, 0, 1)
        squared = np.empty((positions, count), dtype=np.float32)

        def rows(part: slice) -> None:
            delta = vectors[part] - self.mean[part, None]  # (p, N, d)
            squared[part] = np.einsum("pnd,pnd->pn", np.matmul(delta, self.inv_covariance[part]), delta)

        parts = split(positions, pool.chunks(positions) if pool is not None else 1)
        (pool.map if pool is not None else _serial)(rows, parts)
        return np.sqrt(np.maximum(squared, 0.0)).T.reshape(count, grid_h, grid_w)

    def __call__(self, embeddings: np.ndarray, *, pool: Optional[HeadPool] = None) -> tuple[np.ndarray, np.ndarray]:
        """(N, d, h, w) embeddings → raw image scores (N,) float64 and maps (N, H, W) float32."""
        return self._maps(self.distances(embeddings, pool=pool), pool=pool)

    def cost(self, grid_h: int, grid_w: int) -> tuple[int, int]:
        """(FLOPs, bytes touched) of one image through this head: for labelled roofline estimates.

        FLOPs: per position the subtraction, the d×d product and the dot product, then the map
        head's. Bytes: μ, Σ⁻¹ and the embedding (float32) read once, then the map head's."""
        positions, dims = self.mean.shape
        map_flops, map_bytes = self._maps.cost(grid_h, grid_w)
        flops = positions * (dims + 2 * dims * dims + 2 * dims + 1)
        touched = 4 * positions * (dims * dims + 2 * dims)
        return int(flops + map_flops), int(touched + map_bytes)


HEADS = {"knn": KnnHead, "map": MapHead, "mahalanobis": MahalanobisHead}


def build_head(
    kind: str,
    params: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    *,
    output_height: int,
    output_width: int,
    **options: Any,
):
    """Construct the head a manifest names (``options``: device-side choices such as ``search``)."""
    if kind not in HEADS:
        raise EdgekitError(f"unknown head {kind!r}; this edgekit knows {sorted(HEADS)}")
    return HEADS[kind].from_params(params, arrays, output_height=output_height, output_width=output_width, **options)
