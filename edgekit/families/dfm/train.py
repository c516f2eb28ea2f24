"""DFM (deep feature modelling, Ahuja et al. 2019; anomalib's ``Dfm``) on the host.

One frozen backbone level, average-pooled, and a PCA fitted on the normal images' feature vectors;
the anomaly score is the feature reconstruction error, the part of a feature the normal subspace
cannot explain. Nothing is trained by gradient descent, so a run takes seconds.

Differences from anomalib, for a small device: the PCA is fitted on the pooled features of every
grid position (a vector of C channels per position, N·h·w samples) rather than on one flattened
vector per image, so a few dozen normals give a well-posed fit and the map is localised; and the
reconstruction error is computed inside the exported graph as one 1×1 convolution with
M = I − WWᵀ followed by a sum of squares, so the device runs the network and the shared MapHead
only. anomalib's optional Gaussian likelihood score is not offered.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.data.datasets import Dataset
from edgekit.errors import EdgekitError
from edgekit.families.dfm.options import DfmOptions
from edgekit.train.backbones import DEFAULT_BACKBONE, FeaturePyramid, build_feature_extractor
from edgekit.train.engine import Fitted, RunArgs, RunSettings, build_run
from edgekit.train.inputs import embed, input_spec_for
from edgekit.train.maps import MapScoring, parameter_count
from edgekit.train.run import Run

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: The image score is the mean of the map (anomalib's whole-image error up to a constant); the map
#: keeps a σ = 4 blur for the pixel AUROC. Measurements: docs/training.md, "DFM".
SCORE_RULE = {"score": "mean", "top_fraction": 0.01, "blur_sigma": 4.0}


class DfmNetwork(nn.Module):
    """What is exported: image → one backbone level → k×k average pool → reconstruction error
    ||M (f − μ)||² per position, (N, 1, h, w), with M = I − WWᵀ the projection off the normal
    subspace (W: the kept components), as one 1×1 convolution."""

    def __init__(self, extractor: FeaturePyramid, pooling: int, mean: np.ndarray, components: np.ndarray) -> None:
        super().__init__()
        self.extractor = extractor
        self.pooling = int(pooling)
        channels = int(mean.shape[0])
        residual = np.eye(channels) - components.astype(np.float64) @ components.astype(np.float64).T
        self.residual = nn.Conv2d(channels, channels, kernel_size=1, bias=True)
        with torch.no_grad():
            self.residual.weight.copy_(torch.from_numpy(residual.astype(np.float32))[:, :, None, None])
            self.residual.bias.copy_(torch.from_numpy((-(residual @ mean.astype(np.float64))).astype(np.float32)))
        self.residual.requires_grad_(False)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        level = self.extractor(image)[0]
        return F.avg_pool2d(level, self.pooling) if self.pooling > 1 else level

    def error(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) features → (N, C, h, w) residual off the normal subspace."""
        return self.residual(features)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        error = self.error(self.features(image))
        return (error * error).sum(dim=1, keepdim=True)


def fit_pca(vectors: np.ndarray, variance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (C,), components (C, k), explained variance ratios (k,)) of (S, C) samples, keeping
    the fewest components that explain ``variance`` of the total."""
    vectors = vectors.astype(np.float64)
    mean = vectors.mean(axis=0)
    covariance = np.cov(vectors - mean, rowvar=False)
    values, vectors_ = np.linalg.eigh(covariance)
    order = np.argsort(values)[::-1]
    values, vectors_ = np.clip(values[order], 0, None), vectors_[:, order]
    ratios = values / values.sum()
    kept = int(np.searchsorted(np.cumsum(ratios), variance) + 1)
    kept = min(kept, len(values))
    return mean, vectors_[:, :kept], ratios[:kept]


def build_network(
    config: dict,
    *,
    weights: Optional[Path] = None,
    pretrained: bool = False,
    mean: Optional[np.ndarray] = None,
    components: Optional[np.ndarray] = None,
) -> DfmNetwork:
    """The DFM graph; without ``mean``/``components`` (a run being loaded) they are filled from the
    run's weights afterwards."""
    extractor = build_feature_extractor(
        str(config["backbone"]), layers=tuple(config["layers"]), weights=weights, pretrained=pretrained
    )
    channels = int(extractor.channels[0])
    if mean is None or components is None:
        mean, components = np.zeros(channels), np.zeros((channels, int(config["components"])))
    return DfmNetwork(extractor, int(config["pooling"]), mean, components).eval()


SCORING = MapScoring(build_network, SCORE_RULE, "training (torch backbone + PCA reconstruction error + numpy map head)")
load_network, head_for, score_run, evaluate_run = (
    SCORING.load_network,
    SCORING.head_for,
    SCORING.score_run,
    SCORING.evaluate_run,
)


class _Features(nn.Module):
    def __init__(self, network: DfmNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network.features(image)


def train_dfm(
    data: str | Path | Dataset,
    out: str | Path,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: Optional[Path] = None,
    image_size: int = 256,
    batch_size: int = 8,
    layer: int = DfmOptions.layer,
    pooling: int = DfmOptions.pooling,
    variance: float = DfmOptions.variance,
    **run: Unpack[RunArgs],
) -> Run:
    """Fit DFM's PCA on the pooled features of a dataset's normal training images and evaluate it."""
    how = RunSettings(**run)
    if image_size < 32 or image_size % 16:
        raise EdgekitError(f"--image-size must be a multiple of 16 and at least 32, not {image_size}")
    if not 0 < variance < 1:
        raise EdgekitError(f"DFM variance must be between 0 and 1, not {variance}")
    if pooling < 1:
        raise EdgekitError(f"DFM pooling must be at least 1, not {pooling}")
    config = {
        "model": "dfm",
        "backbone": backbone,
        "layers": [int(layer)],
        "pooling": int(pooling),
        "variance": float(variance),
        "image_size": image_size,
        "seed": how.seed,
        "head": dict(SCORE_RULE),
    }

    def fit(writer, dataset, trained: list, held: list) -> Fitted:
        network = build_network({**config, "components": 1}, weights=weights, pretrained=True)
        spec = how.input(input_spec_for(backbone, image_size))
        features = embed(
            _Features(network), trained, spec, batch_size=batch_size, progress=how.progress, stage="features"
        )
        grid = [int(features.shape[2]), int(features.shape[3])]
        vectors = features.transpose(0, 2, 3, 1).reshape(-1, features.shape[1])
        if len(vectors) < 2:
            raise EdgekitError(
                f"DFM needs at least 2 feature vectors to fit a PCA, got {len(vectors)} "
                f"(a {grid[0]}x{grid[1]} grid from {len(trained)} image(s))"
            )
        mean, components, ratios = fit_pca(vectors, variance)
        network = DfmNetwork(network.extractor, pooling, mean, components).eval()
        writer.save_network(SCORING.network_file, network)
        return Fitted(
            {
                **config,
                "components": int(components.shape[1]),
                "channels": int(mean.shape[0]),
                "grid": grid,
                "explained_variance": round(float(ratios.sum()), 6),
                "feature_vectors": int(len(vectors)),
                "parameters": parameter_count(network),
            },
            spec,
            network,
        )

    return build_run(data, out, how, fit=fit, evaluate=evaluate_run)
