"""PCA compression of PatchCore's memory bank, numpy only.

PCA is fitted on the statistics (mean and covariance) of the training patch features, which the
training run stores beside the bank, so any number of dimensions can be chosen at export
without re-running the network. The projection ``y = W (x − μ)`` is linear, so the exporter
folds it into the network as a 1×1 convolution and the device only ever sees ``d``-dimensional
features; the bank is projected once, optionally thinned by re-running the coreset selection
on it (in the ``d``-dimensional space the device searches), then stored as float32, float16 or
int8 (:func:`edgekit.runtime.bank.encode_bank`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from edgekit.compress.coreset import coreset_indices
from edgekit.errors import EdgekitError

#: ``--bank-dims auto`` keeps the fewest components that explain at least this share of variance.
AUTO_VARIANCE = 0.95
#: Rows of features accumulated per step when computing statistics (bounds float64 temporaries).
_STATISTICS_ROWS = 16384
_ITEM_BYTES = {"float32": 4, "float16": 2, "int8": 1}


@dataclass(frozen=True)
class BankSettings:
    """How an exported bank is compressed: ``--bank-dims``, ``--bank-dtype``, ``--bank-size``.

    ``share`` (used when ``size`` is None): thin the bank, by re-running the coreset on it, to
    the most rows whose bytes stay within this share of the uncompressed bank (the coreset at
    full width in float32, anomalib's default), scales included. ``most``: never more rows than
    this (the default bank's head budget, set at export from the network's FLOPs).
    """

    dims: str = "full"  # "full", "auto" or a number of PCA dimensions
    dtype: str = "float32"  # float32 | float16 | int8
    size: Optional[int] = None  # re-select the bank down to this many rows (None: keep all)
    share: Optional[float] = None  # or: to this share of the uncompressed bank's bytes
    most: Optional[int] = None  # and to at most this many rows

    def rows(self, coreset_rows: int, feature_dims: int, dims: int) -> Optional[int]:
        """Rows to keep of a ``coreset_rows``-row bank stored in ``dims`` dimensions; None: all."""
        rows = self.size
        if rows is None and self.share is not None:
            scales = 2 * dims * 4 if self.dtype == "int8" else 0
            budget = coreset_rows * feature_dims * 4 * self.share - scales
            rows = max(1, int(budget // (dims * _ITEM_BYTES[self.dtype])))
        if self.most is not None:
            rows = min(rows or coreset_rows, self.most)
        return rows if rows is not None and rows < coreset_rows else None


#: anomalib's bank: the 10 % coreset, every dimension, float32.
UNCOMPRESSED = BankSettings()
#: The export default (no --bank-* option given), chosen from benchmarks/bank_tradeoff.py: on
#: Lite0, PCA costs far more accuracy than int8 storage and a smaller coreset do (see the README).
DEFAULT_BANK = BankSettings(dims="full", dtype="int8", share=0.05)


@dataclass(frozen=True)
class FeatureStatistics:
    """Mean and covariance (population, float64) of ``count`` feature rows: all PCA needs."""

    mean: np.ndarray
    covariance: np.ndarray
    count: int


def feature_statistics(features: np.ndarray) -> FeatureStatistics:
    """Mean and covariance of (N, D) features, accumulated in float64 in bounded chunks."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise EdgekitError(f"PCA needs at least 2 feature rows in an (N, D) array, not {features.shape}")
    statistics = RunningStatistics(features.shape[1])
    statistics.add(features)
    return statistics.result()


class RunningStatistics:
    """Mean and scatter of feature rows that arrive in parts (Chan et al.'s pairwise update, float64),
    so training sets too large to hold still give PCA its statistics."""

    def __init__(self, dims: int) -> None:
        self.count = 0
        self.mean = np.zeros(dims)
        self.scatter = np.zeros((dims, dims))

    def add(self, rows: np.ndarray) -> None:
        for start in range(0, len(rows), _STATISTICS_ROWS):
            part = rows[start : start + _STATISTICS_ROWS]
            mean = part.mean(axis=0, dtype=np.float64)
            centred = part.astype(np.float64) - mean
            total = self.count + len(part)
            delta = mean - self.mean
            self.scatter += centred.T @ centred + np.outer(delta, delta) * (self.count * len(part) / total)
            self.mean += delta * (len(part) / total)
            self.count = total

    def result(self) -> FeatureStatistics:
        if self.count < 2:
            raise EdgekitError(f"PCA needs at least 2 feature rows, not {self.count}")
        return FeatureStatistics(mean=self.mean.copy(), covariance=self.scatter / self.count, count=int(self.count))


@dataclass(frozen=True)
class Pca:
    """The first ``dims`` principal axes of some features: ``project(x) = components @ (x − mean)``.

    ``residual``: one more coordinate, the energy PCA drops, ‖(x − μ) − Wᵀ W (x − μ)‖ (classical
    PCA monitoring's squared prediction error, as a norm). Distances in the d + 1 coordinates lie
    between plain PCA's and the full ones, and a defect that lives only in the dropped directions
    still moves its patch away from every bank row.
    """

    mean: np.ndarray  # (D,) float64
    components: np.ndarray  # (d, D) float64, orthonormal rows, by decreasing variance
    variances: np.ndarray  # (D,) float64, every eigenvalue, decreasing
    fitted_on: int  # feature rows the statistics came from
    residual: bool = False

    @property
    def dims(self) -> int:
        return int(self.components.shape[0])

    @property
    def output_dims(self) -> int:
        """Coordinates the projected features (and the bank) have: dims, plus one with the residual."""
        return self.dims + int(self.residual)

    @property
    def input_dims(self) -> int:
        return int(self.components.shape[1])

    @property
    def explained_variance(self) -> float:
        """Share of the features' variance the kept axes explain."""
        total = float(self.variances.sum())
        return float(self.variances[: self.dims].sum() / total) if total > 0 else 1.0

    def weight(self) -> np.ndarray:
        """(d, D) float32: the 1×1 convolution's weight."""
        return self.components.astype(np.float32)

    def bias(self) -> np.ndarray:
        """(d,) float32: the 1×1 convolution's bias, −W μ (mean subtraction folded in)."""
        return (-(self.components @ self.mean)).astype(np.float32)

    def project_rows(self, features: np.ndarray) -> np.ndarray:
        """(N, D) → (N, output_dims) float32, computed in float64 (used for the bank)."""
        centred = np.asarray(features, dtype=np.float64) - self.mean
        projected = centred @ self.components.T
        if self.residual:
            energy = np.einsum("nc,nc->n", centred, centred) - np.einsum("nd,nd->n", projected, projected)
            projected = np.concatenate([projected, np.sqrt(np.maximum(energy, 0.0))[:, None]], axis=1)
        return projected.astype(np.float32)

    def project_maps(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, D, h, w) → (N, output_dims, h, w) float32 as the folded network computes it."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        projected = np.einsum("dc,nchw->ndhw", self.weight(), embeddings) + self.bias()[None, :, None, None]
        if self.residual:
            centred = embeddings - self.mean.astype(np.float32)[None, :, None, None]
            energy = np.sum(centred * centred, axis=1, keepdims=True) - np.sum(
                projected * projected, axis=1, keepdims=True
            )
            projected = np.concatenate([projected, np.sqrt(np.maximum(energy, 0.0))], axis=1)
        return np.ascontiguousarray(projected, dtype=np.float32)


def fit_pca(statistics: FeatureStatistics, dims: int, *, residual: bool = False) -> Pca:
    """Principal axes from the covariance's eigen-decomposition; signs fixed for determinism."""
    width = statistics.covariance.shape[0]
    if not 1 <= dims <= width:
        raise EdgekitError(f"PCA dimensions must be between 1 and the feature width {width}, not {dims}")
    variances, vectors = np.linalg.eigh(statistics.covariance)
    order = np.argsort(variances)[::-1]
    variances, vectors = np.clip(variances[order], 0.0, None), vectors[:, order].T
    signs = np.sign(vectors[np.arange(width), np.argmax(np.abs(vectors), axis=1)])
    vectors *= np.where(signs == 0, 1.0, signs)[:, None]  # largest entry of every axis positive
    return Pca(
        mean=np.asarray(statistics.mean, dtype=np.float64),
        components=vectors[:dims].copy(),
        variances=variances,
        fitted_on=statistics.count,
        residual=residual,
    )


def wants_residual(spec: Optional[str | int]) -> bool:
    """``--bank-dims 64+r``: PCA with the residual-energy coordinate (Pca.residual)."""
    return spec is not None and str(spec).strip().lower().endswith("+r")


def resolve_dims(
    spec: Optional[str | int], statistics: FeatureStatistics, *, auto_variance: float = AUTO_VARIANCE
) -> Optional[int]:
    """``--bank-dims`` → a number of PCA dimensions, or None for "full" (no projection at all);
    a "+r" suffix (the residual coordinate) does not change the number."""
    width = statistics.covariance.shape[0]
    text = str(spec).strip().lower() if spec is not None else "full"
    if text.endswith("+r"):
        text = text[:-2]
        if text == "full":
            raise EdgekitError("--bank-dims full+r has nothing to add: full keeps every dimension")
    if text == "full":
        return None
    if text == "auto":
        variances = np.clip(np.sort(np.linalg.eigvalsh(statistics.covariance))[::-1], 0.0, None)
        shares = np.cumsum(variances) / max(float(variances.sum()), 1e-300)
        dims = int(np.searchsorted(shares, auto_variance - 1e-12) + 1)
        return None if dims >= width else dims
    if not text.isdigit() or int(text) < 1:
        raise EdgekitError(
            f"--bank-dims must be full, auto or a positive integer (+r: with the residual), not {spec!r}"
        )
    if int(text) > width:
        raise EdgekitError(
            f"--bank-dims {text} is more than the features' {width} dimensions; use full or at most {width}"
        )
    return None if int(text) == width else int(text)


@dataclass(frozen=True)
class CompressedBank:
    """What the head stores: encoded arrays, the projection the network must apply, a description."""

    arrays: dict[str, np.ndarray]  # head array name -> array (memory_bank, bank_scale, ...)
    pca: Optional[Pca]  # None: the network output is used as it is
    description: dict[str, Any] = field(default_factory=dict)  # goes into the head params as "bank"

    @property
    def nbytes(self) -> int:
        return int(sum(array.nbytes for array in self.arrays.values()))


def compress_bank(
    bank: np.ndarray,
    *,
    pca: Optional[Pca] = None,
    dtype: str = "float32",
    size: Optional[int] = None,
    seed: int = 0,
    feature_dims: Optional[int] = None,
) -> CompressedBank:
    """Project (when ``pca``), thin to ``size`` rows by coreset re-selection, encode as ``dtype``.

    Re-selection runs in the projected space (the one the device searches) and before encoding,
    so the int8 scales fit the rows that are kept. ``feature_dims``: the width of the network's
    features before any projection (default: the bank's width, or the PCA's input width).
    """
    from edgekit.runtime.bank import encode_bank

    bank = np.asarray(bank, dtype=np.float32)
    if bank.ndim != 2 or len(bank) == 0:
        raise EdgekitError(f"the memory bank must be a non-empty (N, D) array, not {bank.shape}")
    source_rows, source_dims = bank.shape
    if pca is not None:
        if pca.input_dims != source_dims:
            raise EdgekitError(f"PCA expects {pca.input_dims}-dimensional features, the bank has {source_dims}")
        bank = pca.project_rows(bank)
    if size is not None:
        if size < 1:
            raise EdgekitError(f"--bank-size must be at least 1, not {size}")
        if size < len(bank):
            bank = bank[np.sort(coreset_indices(bank, size, seed=seed))]
    arrays = encode_bank(bank, dtype)
    description: dict[str, Any] = {
        "rows": int(bank.shape[0]),
        "dims": int(bank.shape[1]),
        "feature_dims": int(feature_dims or source_dims),
        "dtype": dtype,
        "coreset_rows": int(source_rows),
        "reselected_from": int(source_rows) if len(bank) < source_rows else None,
        "projection": "none"
        if pca is None
        else "pca (folded into the network as a 1x1 convolution)"
        + (" + residual energy ||x - mu - W'W(x - mu)|| as the last coordinate" if pca.residual else ""),
    }
    if dtype == "int8":
        description["quantization"] = "affine per dimension: value = bank_offset + bank_scale * q"
    if pca is not None:
        description.update({"explained_variance": round(pca.explained_variance, 6), "pca_fitted_on": pca.fitted_on})
    return CompressedBank(arrays=arrays, pca=pca, description=description)
