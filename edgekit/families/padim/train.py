"""PaDiM on the host: the exportable embedding network, the Gaussian fit, and training-path scoring.

The network is a plain ``nn.Module`` (image → the random channel subset of the concatenated
backbone levels, N×d×h×w); the Gaussian statistics and the Mahalanobis scoring live in numpy
(:class:`edgekit.runtime.heads.MahalanobisHead`), shared with the device. As in the PaDiM paper
(and anomalib), the deeper levels are resized to the first level's grid by nearest neighbour and
a seeded random subset of ``dims`` channels is kept. What we do differently, for deployment: the
subset is taken per level *before* the resize (same embedding, less work), the backbone comes
from the offline registry, the pre-processing is edgekit's one function, and normal images are
held out of the fit so thresholds can be fitted later.

Default size for a 256² input: levels 2 and 3 (stride 8 and 16) give a 32×32 grid, and d = 64 of
their 40 + 112 Lite0 channels keep the inverse covariances at 1024·64·64 values, 8.4 MB as the
float16 a bundle stores (measurements: HEAD_DTYPE's comment and docs/training.md, "PaDiM").
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.data.datasets import Dataset
from edgekit.errors import EdgekitError
from edgekit.families.padim.options import PadimOptions
from edgekit.preprocess import ImageLike, stitch
from edgekit.progress import ProgressFn, noop
from edgekit.runtime.heads import MahalanobisHead
from edgekit.train.backbones import DEFAULT_BACKBONE, build_feature_extractor
from edgekit.train.engine import Fitted, RunArgs, RunSettings, build_run
from edgekit.train.inputs import embed, input_spec_for
from edgekit.train.run import Run, evaluate_on_test_split, load_weights

if TYPE_CHECKING:
    from typing_extensions import Unpack

NETWORK_FILE = "network.safetensors"
MEAN, INV_COVARIANCE = "mean", "inv_covariance"
#: Pyramid levels: stride 8 + 16, a 32×32 grid at 256² (stride 4 would be 64×64: 4× the head's bytes).
DEFAULT_LAYERS = (2, 3)
#: Added to every position's covariance diagonal (the PaDiM paper's ε·I) before inverting.
REGULARISATION = 0.01
BLUR_SIGMA = 4.0
#: How Σ⁻¹ ships in a bundle. float16 halves the head (16.8 → 8.4 MB at d = 64, 32×32); measured on
#: brick: image scores change by at most 8.6e-5 relative (mean 1.6e-5), AUROCs unchanged. The run
#: keeps float32; the training path scores with the shipped storage so it equals the device's.
HEAD_DTYPE = "float16"


class PadimNetwork(nn.Module):
    """Backbone levels → each level's share of the channel subset → nearest resize to the first
    level's grid → concatenation. Output: (N, d, h, w), channels in ascending subset order."""

    def __init__(self, extractor: nn.Module, channel_index: Sequence[int]) -> None:
        super().__init__()
        self.extractor = extractor
        self.channel_index = tuple(int(i) for i in channel_index)
        starts = np.cumsum((0,) + tuple(extractor.channels))
        self.level_channels = []  # (level position, indices into that level), levels without any skipped
        for position, (low, high) in enumerate(zip(starts[:-1], starts[1:])):
            chosen = [i - int(low) for i in self.channel_index if low <= i < high]
            if chosen:
                self.register_buffer(f"index_{position}", torch.tensor(chosen, dtype=torch.long), persistent=False)
                self.level_channels.append(position)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        levels = self.extractor(image)
        size = levels[0].shape[-2:]
        parts = []
        for position in self.level_channels:
            chosen = levels[position].index_select(1, getattr(self, f"index_{position}"))
            if chosen.shape[-2:] != size:
                chosen = F.interpolate(chosen, size=size, mode="nearest")
            parts.append(chosen)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


class MahalanobisDistance(nn.Module):
    """The Mahalanobis distance as a torch module, for measuring the in-graph alternative to the
    numpy head (benchmarks/padim_head.py): (N, d, h, w) embeddings → (N, 1, h, w) distances."""

    def __init__(self, mean: np.ndarray, inv_covariance: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(np.ascontiguousarray(mean, np.float32)))
        self.register_buffer("inv_covariance", torch.from_numpy(np.ascontiguousarray(inv_covariance, np.float32)))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        count, dims, height, width = embeddings.shape
        delta = embeddings.reshape(count, dims, height * width).permute(2, 0, 1) - self.mean[:, None, :]
        squared = (torch.bmm(delta, self.inv_covariance) * delta).sum(dim=2)  # (P, N)
        return squared.clamp(min=0).sqrt().permute(1, 0).reshape(count, 1, height, width)


def channel_subset(total: int, dims: int, seed: int) -> list[int]:
    """The seeded random choice of ``dims`` of ``total`` channels, ascending (PaDiM's reduction)."""
    return sorted(int(i) for i in np.random.default_rng(seed).permutation(total)[:dims])


def build_network(config: dict, *, weights: Optional[Path] = None, pretrained: bool = True) -> PadimNetwork:
    extractor = build_feature_extractor(
        config["backbone"], layers=tuple(config["layers"]), weights=weights, pretrained=pretrained
    )
    return PadimNetwork(extractor, config["channel_index"]).eval()


def load_network(run: Run) -> PadimNetwork:
    """Rebuild a run's network from its config and its safetensors weights (no hub, no package)."""
    return load_weights(build_network(dict(run.config), pretrained=False), run, NETWORK_FILE)


class GaussianFit:
    """Per-position mean and covariance of (N, d, h, w) embeddings, accumulated batch by batch in
    float64 around the first batch's mean (so the sums do not cancel), never holding them all."""

    def __init__(self) -> None:
        self.count = 0
        self.grid: list[int] = []
        self.shift: Optional[np.ndarray] = None
        self.total: Optional[np.ndarray] = None
        self.outer: Optional[np.ndarray] = None

    def add(self, embeddings: np.ndarray) -> None:
        count, dims = embeddings.shape[:2]
        vectors = embeddings.reshape(count, dims, -1).transpose(2, 0, 1).astype(np.float64)  # (P, N, d)
        if self.shift is None:
            self.grid = [int(embeddings.shape[2]), int(embeddings.shape[3])]
            self.shift = vectors.mean(axis=1, keepdims=True)
            self.total = np.zeros((vectors.shape[0], dims))
            self.outer = np.zeros((vectors.shape[0], dims, dims))
        centred = vectors - self.shift
        self.total += centred.sum(axis=1)
        self.outer += np.matmul(centred.transpose(0, 2, 1), centred)
        self.count += count

    def statistics(self, regularisation: float = REGULARISATION) -> tuple[np.ndarray, np.ndarray]:
        """(mean (P, d), inverse of covariance + regularisation·I (P, d, d)), both float32.

        The covariance is the unbiased one (N − 1), as numpy's ``cov`` and the paper."""
        if self.count < 2:
            raise EdgekitError(f"PaDiM needs at least 2 training images to fit its Gaussians, got {self.count}")
        centred_mean = self.total / self.count
        covariance = (self.outer - self.count * centred_mean[:, :, None] * centred_mean[:, None, :]) / (self.count - 1)
        covariance += regularisation * np.eye(covariance.shape[-1])
        mean = centred_mean + self.shift[:, 0, :]
        return mean.astype(np.float32), np.linalg.inv(covariance).astype(np.float32)


def head_arrays(run: Run, dtype: str = HEAD_DTYPE) -> dict[str, np.ndarray]:
    """The head's arrays as a bundle stores them: μ float32, Σ⁻¹ in ``dtype``."""
    return {MEAN: run.array(MEAN), INV_COVARIANCE: run.array(INV_COVARIANCE).astype(dtype)}


def head_for(run: Run, dtype: str = HEAD_DTYPE) -> MahalanobisHead:
    spec = run.input_spec()
    params = {"blur_sigma": float(run.config.get("blur_sigma", BLUR_SIGMA)), "dtype": dtype}
    return MahalanobisHead.from_params(
        params, head_arrays(run, dtype), output_height=spec.height, output_width=spec.width
    )


def score_run(
    run: Run,
    images: Sequence[ImageLike],
    *,
    network: Optional[nn.Module] = None,
    head_dtype: str = HEAD_DTYPE,
    batch_size: int = 8,
    progress: ProgressFn = noop,
) -> tuple[np.ndarray, np.ndarray]:
    """The training path's raw scores and maps: torch network + the shared numpy head, Σ⁻¹ stored
    as ``head_dtype`` (default: as the export ships it, so this equals the bundle's scores up to
    the runtime's float rounding)."""
    network = network or load_network(run)
    spec = run.input_spec()
    embeddings = embed(network, images, spec, batch_size=batch_size, progress=progress, stage="scoring")
    return stitch(*head_for(run, head_dtype)(embeddings), spec)


def train_padim(
    data: str | Path | Dataset,
    out: str | Path,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: Optional[Path] = None,
    layers: Optional[Sequence[int]] = None,
    image_size: int = 256,
    dims: int = PadimOptions.dims,
    batch_size: int = 8,
    **run: Unpack[RunArgs],
) -> Run:
    """Fit PaDiM's per-position Gaussians on a dataset's normal training images and evaluate them."""
    how = RunSettings(**run)
    if image_size < 32 or image_size % 8:
        raise EdgekitError(f"--image-size must be a multiple of 8 and at least 32, not {image_size}")
    if batch_size < 1:
        raise EdgekitError(f"--batch-size must be at least 1, not {batch_size}")
    layers = tuple(layers) if layers else DEFAULT_LAYERS

    def fit(writer, dataset, trained: list, held: list) -> Fitted:
        extractor = build_feature_extractor(backbone, layers=layers, weights=weights)
        total = int(sum(extractor.channels))
        if not 1 <= dims <= total:
            raise EdgekitError(
                f"PaDiM dims must be in 1..{total} ({backbone} layers {list(extractor.layers)} "
                f"have {total} channels), not {dims}"
            )
        config = {
            "model": "padim",
            "backbone": backbone,
            "layers": list(extractor.layers),
            "image_size": image_size,
            "dims": dims,
            "channels_total": total,
            "channel_index": channel_subset(total, dims, how.seed),
            "regularisation": REGULARISATION,
            "blur_sigma": BLUR_SIGMA,
            "seed": how.seed,
        }
        network = PadimNetwork(extractor, config["channel_index"]).eval()
        input_spec = how.input(input_spec_for(backbone, image_size))
        gaussians = GaussianFit()
        how.progress("features", 0, len(trained))
        for start in range(0, len(trained), batch_size):
            gaussians.add(embed(network, trained[start : start + batch_size], input_spec, batch_size=batch_size))
            how.progress("features", min(start + batch_size, len(trained)), len(trained))
        mean, inv_covariance = gaussians.statistics(REGULARISATION)
        writer.save_array(MEAN, mean)
        writer.save_array(INV_COVARIANCE, inv_covariance)
        writer.save_network(NETWORK_FILE, network)
        config.update(
            {
                "feature_dims": dims,
                "grid": gaussians.grid,
                "head_bytes": int(mean.nbytes + inv_covariance.nbytes),
            }
        )
        return Fitted(config, input_spec, network)

    return build_run(data, out, how, fit=fit, evaluate=functools.partial(evaluate_run, batch_size=batch_size))


def evaluate_run(
    run: Run, dataset: Dataset, *, network: Optional[nn.Module] = None, batch_size: int = 8, progress: ProgressFn = noop
) -> dict:
    """Training-path image and pixel AUROC on the dataset's labelled test split."""
    return evaluate_on_test_split(
        run,
        dataset,
        lambda images: score_run(run, images, network=network, batch_size=batch_size, progress=progress),
        f"training (torch network + numpy Mahalanobis head, inverse covariances {HEAD_DTYPE})",
    )
