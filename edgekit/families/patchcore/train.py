"""PatchCore on the host: the exportable embedding network, training, and training-path scoring.

The network is a plain ``nn.Module`` (image → locally-aware patch embeddings); the memory bank
and the scoring live in numpy (:class:`edgekit.runtime.heads.KnnHead`), shared with the device.
What we do differently from anomalib's PatchCore, for deployment: the pre-processing is
edgekit's one function, the backbone comes from the offline registry, the coreset is our fast
numpy k-center, and normal images are held out of the bank so thresholds can be fitted later.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.compress.coreset import StreamedCoreset, coreset_count, select_coreset
from edgekit.compress.pca import (
    DEFAULT_BANK,
    UNCOMPRESSED,
    BankSettings,
    CompressedBank,
    FeatureStatistics,
    RunningStatistics,
    compress_bank,
    feature_statistics,
    fit_pca,
    resolve_dims,
    wants_residual,
)
from edgekit.data.datasets import Dataset
from edgekit.errors import EdgekitError
from edgekit.families.patchcore.options import PatchcoreOptions
from edgekit.preprocess import ImageLike, InputSpec, stitch
from edgekit.progress import ProgressFn, noop
from edgekit.runtime.bank import decode_bank
from edgekit.runtime.heads import KnnHead
from edgekit.train.backbones import DEFAULT_BACKBONE, build_feature_extractor, get_backbone_spec
from edgekit.train.engine import Fitted, RunArgs, RunSettings, build_run
from edgekit.train.inputs import embed, input_spec_for
from edgekit.train.run import Run, evaluate_on_test_split, load_weights

if TYPE_CHECKING:
    from typing_extensions import Unpack

NETWORK_FILE = "network.safetensors"
#: Mean and covariance of all bank-image patch features: what PCA bank compression is fitted on.
PATCH_MEAN, PATCH_COVARIANCE = "patch_mean", "patch_covariance"
#: --coreset auto: exact greedy up to this many training patches (64 images at 256², the demo's
#: 48 included), streamed above; and the streamed selection's chunk.
EXACT_PATCHES, STREAM_CHUNK = 65536, 8192


class PatchcoreNetwork(nn.Module):
    """Backbone levels → 3×3 local average → bilinear resize to the finest level → concatenation.

    Output: (N, D, h, w) patch embeddings, D = the sum of the chosen levels' channels.
    """

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        levels = [F.avg_pool2d(level, kernel_size=3, stride=1, padding=1) for level in self.extractor(image)]
        size = levels[0].shape[-2:]
        resized = [levels[0]] + [
            F.interpolate(level, size=size, mode="bilinear", align_corners=False) for level in levels[1:]
        ]
        return torch.cat(resized, dim=1)


class WithResidual(nn.Module):
    """The embedding network, then the PCA convolution and the energy it drops as one more channel:
    [W (f − μ), √max(‖f − μ‖² − ‖W (f − μ)‖², 0)] (Pca.residual; numpy: Pca.project_maps)."""

    def __init__(self, network: nn.Module, conv: nn.Conv2d, mean: torch.Tensor) -> None:
        super().__init__()
        self.network, self.conv = network, conv
        self.register_buffer("mean", mean[None, :, None, None])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.network(image)
        projected = self.conv(features)
        centred = features - self.mean
        energy = (centred * centred).sum(dim=1, keepdim=True) - (projected * projected).sum(dim=1, keepdim=True)
        return torch.cat([projected, energy.clamp(min=0.0).sqrt()], dim=1)


def build_network(config: dict, *, weights: Optional[Path] = None, pretrained: bool = True) -> PatchcoreNetwork:
    extractor = build_feature_extractor(
        config["backbone"], layers=tuple(config["layers"]), weights=weights, pretrained=pretrained
    )
    return PatchcoreNetwork(extractor).eval()


def load_network(run: Run) -> PatchcoreNetwork:
    """Rebuild a run's network from its config and its safetensors weights (no hub, no package)."""
    return load_weights(build_network(dict(run.config), pretrained=False), run, NETWORK_FILE)


def patch_statistics(run: Run) -> tuple[FeatureStatistics, str]:
    """The run's training patch statistics for PCA, and what they were computed on.

    Runs made before edgekit stored them fall back to the coreset bank itself (a biased sample:
    the coreset over-represents rare patches), and say so.
    """
    if (run.path / f"{PATCH_MEAN}.npy").is_file() and (run.path / f"{PATCH_COVARIANCE}.npy").is_file():
        rows = int(run.config.get("patch_statistics_rows", run.config.get("patches_seen", 0)))
        statistics = FeatureStatistics(mean=run.array(PATCH_MEAN), covariance=run.array(PATCH_COVARIANCE), count=rows)
        return statistics, f"all {rows} training patches"
    bank = run.array("memory_bank")
    return feature_statistics(bank), f"the {len(bank)}-row coreset (this run stores no patch statistics)"


def compressed_bank(run: Run, settings: BankSettings = DEFAULT_BANK) -> CompressedBank:
    """The run's coreset bank compressed as ``settings`` say: one function for export and scoring."""
    statistics, source = patch_statistics(run)
    dims = resolve_dims(settings.dims, statistics)
    pca = fit_pca(statistics, dims, residual=wants_residual(settings.dims)) if dims is not None else None
    bank = run.array("memory_bank")
    size = settings.rows(len(bank), bank.shape[1], pca.output_dims if pca else bank.shape[1])
    compressed = compress_bank(bank, pca=pca, dtype=settings.dtype, size=size, seed=int(run.config.get("seed", 0)))
    if pca is not None:
        compressed.description["pca_fitted_on"] = source
    return compressed


def head_for(run: Run, compressed: Optional[CompressedBank] = None) -> KnnHead:
    spec = run.input_spec()
    compressed = compressed or compressed_bank(run, UNCOMPRESSED)
    bank = decode_bank(compressed.arrays, compressed.description["dtype"])
    return KnnHead(
        memory_bank=bank,
        num_neighbors=int(run.config["num_neighbors"]),
        output_height=spec.height,
        output_width=spec.width,
    )


def score_run(
    run: Run,
    images: Sequence[ImageLike],
    *,
    network: Optional[nn.Module] = None,
    bank: BankSettings = DEFAULT_BANK,
    batch_size: int = 8,
    progress: ProgressFn = noop,
) -> tuple[np.ndarray, np.ndarray]:
    """The training path's raw scores and maps: torch network + the shared numpy head.

    ``bank`` compresses the memory bank as an export with those settings does (default: the
    export default), the PCA projection applied in numpy as the folded convolution computes it,
    so this equals the exported bundle's scores up to the runtime's float rounding.
    """
    network = network or load_network(run)
    spec = run.input_spec()
    embeddings = embed(network, images, spec, batch_size=batch_size, progress=progress, stage="scoring")
    compressed = compressed_bank(run, bank)
    if compressed.pca is not None:
        embeddings = compressed.pca.project_maps(embeddings)
    return stitch(*head_for(run, compressed)(embeddings), spec)


def train_patchcore(
    data: str | Path | Dataset,
    out: str | Path,
    *,
    backbone: str = DEFAULT_BACKBONE,
    layers: Optional[Sequence[int]] = None,
    image_size: int = 256,
    coreset_ratio: float = PatchcoreOptions.coreset_ratio,
    num_neighbors: int = PatchcoreOptions.num_neighbors,
    coreset_rows: Optional[int] = PatchcoreOptions.coreset_rows,
    weights: Optional[Path] = None,
    batch_size: int = 8,
    coreset: str = PatchcoreOptions.coreset,
    **run: Unpack[RunArgs],
) -> Run:
    """Build a PatchCore memory bank from a dataset's normal training images and evaluate it."""
    how = RunSettings(**run)
    if not 0 < coreset_ratio <= 1:
        raise EdgekitError(f"--coreset-ratio must be in (0, 1], not {coreset_ratio}")
    if coreset_rows is not None and coreset_rows < 1:
        raise EdgekitError(f"--coreset-rows must be at least 1, not {coreset_rows}")
    if coreset not in ("auto", "exact", "streamed"):
        raise EdgekitError(f"--coreset must be auto, exact or streamed, not {coreset!r}")
    if num_neighbors < 1:
        raise EdgekitError(f"--num-neighbors must be at least 1, not {num_neighbors}")
    if image_size < 32 or image_size % 8:
        raise EdgekitError(f"--image-size must be a multiple of 8 and at least 32, not {image_size}")
    spec = get_backbone_spec(backbone)
    layers = tuple(layers) if layers else tuple(spec.patchcore_layers)
    config = {
        "model": "patchcore",
        "backbone": backbone,
        "layers": list(layers),
        "image_size": image_size,
        "num_neighbors": num_neighbors,
        "coreset_ratio": coreset_ratio,
        **({"coreset_rows": coreset_rows} if coreset_rows is not None else {}),
        "seed": how.seed,
    }

    def fit(writer, dataset, trained: list, held: list) -> Fitted:
        network = build_network(config, weights=weights)
        input_spec = how.input(input_spec_for(backbone, image_size))
        batches = _patch_batches(network, trained, input_spec, batch_size, how.progress)
        grid, first = next(batches)
        total = len(trained) * input_spec.tile_count * grid[0] * grid[1]
        count = coreset_count(total, coreset_ratio, rows=coreset_rows)
        method = coreset if coreset != "auto" else ("exact" if total <= EXACT_PATCHES else "streamed")
        statistics = RunningStatistics(first.shape[1])
        timing: dict[str, float] = {}  # metrics.json: run.json stays the same for the same inputs
        coreset_progress = functools.partial(how.progress, "coreset")
        if method == "exact":
            patches = np.concatenate([first, *(rows for _, rows in batches)])
            statistics.add(patches)
            chosen, radius = select_coreset(patches, count, seed=how.seed, progress=coreset_progress)
            bank, selection = patches[chosen], {"radius": round(radius, 6)}
        else:
            stream = StreamedCoreset(total, count, first.shape[1], chunk_rows=STREAM_CHUNK, seed=how.seed)
            for rows in itertools.chain([first], (rows for _, rows in batches)):
                stream.add(rows)
                statistics.add(rows)
            bank, selection = stream.finish(coreset_progress)
            timing["coreset_first_level_seconds"] = round(stream.first_level_seconds, 3)
        writer.save_array("memory_bank", bank)
        patch_statistics = statistics.result()
        writer.save_array(PATCH_MEAN, patch_statistics.mean)
        writer.save_array(PATCH_COVARIANCE, patch_statistics.covariance)
        writer.save_network(NETWORK_FILE, network)
        return Fitted(
            {
                **config,
                "feature_dims": int(first.shape[1]),
                "grid": list(grid),
                "bank_rows": int(count),
                "patches_seen": int(total),
                "patch_statistics_rows": patch_statistics.count,
                "coreset_selection": {"method": method, **selection},
            },
            input_spec,
            network,
            timing,
        )

    return build_run(data, out, how, fit=fit, evaluate=functools.partial(evaluate_run, batch_size=batch_size))


def _patch_batches(
    network: nn.Module, images: Sequence[Path], spec: InputSpec, batch_size: int, progress: ProgressFn
) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """The training images' patch embeddings, one batch at a time: ((h, w), (n·h·w, D) float32)."""
    progress("embedding", 0, len(images))
    for start in range(0, len(images), batch_size):
        embeddings = embed(network, images[start : start + batch_size], spec, batch_size=batch_size)
        progress("embedding", min(start + batch_size, len(images)), len(images))
        grid = (int(embeddings.shape[2]), int(embeddings.shape[3]))
        yield grid, embeddings.transpose(0, 2, 3, 1).reshape(-1, embeddings.shape[1])


def evaluate_run(
    run: Run, dataset: Dataset, *, network: Optional[nn.Module] = None, batch_size: int = 8, progress: ProgressFn = noop
) -> dict:
    """Training-path image and pixel AUROC on the dataset's labelled test split."""
    return evaluate_on_test_split(
        run,
        dataset,
        lambda images: score_run(
            run, images, network=network, bank=UNCOMPRESSED, batch_size=batch_size, progress=progress
        ),
        "training (torch network + numpy head, uncompressed bank)",
    )
