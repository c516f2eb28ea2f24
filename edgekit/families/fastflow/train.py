"""FastFlow (Yu et al., 2021): 2-D normalising flows on a frozen backbone's feature pyramid.

Each pyramid level (default tf_efficientnet_lite0 levels 1, 2, 3) feeds its own flow, anomalib's
``create_fast_flow_block``, trained by maximum likelihood (anomalib's ``FastflowLoss``); the
backbone never trains, so its features are computed once. A LayerNorm sits between each level and
its flow as in anomalib (NORMALISE): without it the flows start far from a unit Gaussian and the
map saturates. The exported graph ends in anomalib's anomaly map at the finest level's grid
(:class:`FlowAnomalyMap`, values in [−1, 0], higher = more anomalous); the numpy MapHead resizes,
blurs and scores it (SCORE_RULE: maximum after a σ = 4 blur). Measurements: docs/training.md,
"FastFlow".
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.data.datasets import Dataset
from edgekit.errors import EdgekitError
from edgekit.families.fastflow.options import FastflowOptions
from edgekit.preprocess import prepare
from edgekit.progress import ProgressFn
from edgekit.train.backbones import DEFAULT_BACKBONE, build_feature_extractor
from edgekit.train.engine import Fitted, RunArgs, RunSettings, build_run
from edgekit.train.inputs import input_spec_for
from edgekit.train.maps import MapScoring, Schedule, parameter_count, train_epochs, training_settings
from edgekit.train.run import Run

if TYPE_CHECKING:
    from typing_extensions import Unpack

DEFAULT_LAYERS = (1, 2, 3)
NORMALISATIONS = ("layernorm", "none")
NORMALISE = "layernorm"
#: anomalib's defaults are 8 steps, hidden ratio 1.0, alternating 3x3 / 1x1 subnets. 4 steps: an epoch
#: of the 48 brick images cost 8.5 CPU-seconds instead of 26 with 8 (brick AUROC 1.000 with 4; 8 steps
#: were not trained to the end on this loaded machine, so their accuracy is not known).
FLOW_STEPS = 4
HIDDEN_RATIO = 1.0
CONV3X3_ONLY = False
CLAMP = 2.0  # anomalib's affine_clamping: coupling log-scales within ±2
WEIGHT_DECAY = 1e-5  # anomalib: Adam 1e-3, wd 1e-5
SCORE_RULE = {"score": "max", "top_fraction": 0.01, "blur_sigma": 4.0}


def _mean_weight(channels: int) -> torch.Tensor:
    """The 1x1 convolution weight that averages ``channels`` channels (a constant of the graph)."""
    return torch.full((1, channels, 1, 1), 1.0 / channels)


def _channel_mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over channels as a fixed 1x1 convolution (N, C, h, w) → (N, 1, h, w): no reshape."""
    return F.conv2d(x, weight)


class GridLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over (C, H, W) (same parameters, same numbers) written without reductions
    that keep dimensions: litert-torch lowers those to RESHAPE with a constant batch-1 shape.
    Mean over (C, H, W) = channel mean (1x1 convolution) of the full-grid average pool."""

    def __init__(self, normalized_shape: Sequence[int], **options) -> None:
        super().__init__(normalized_shape, **options)
        # constants of the graph, fixed here so the ONNX exporter sees no shape arithmetic
        self.register_buffer("mean_weight", _mean_weight(int(self.normalized_shape[0])), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = tuple(self.normalized_shape[-2:])
        centred = x - _channel_mean(F.avg_pool2d(x, grid), self.mean_weight)
        variance = _channel_mean(F.avg_pool2d(centred * centred, grid), self.mean_weight)
        return centred / torch.sqrt(variance + self.eps) * self.weight + self.bias


def _norm(kind: str, channels: int, grid: tuple[int, int]) -> nn.Module:
    return GridLayerNorm([channels, *grid], elementwise_affine=True) if kind == "layernorm" else nn.Identity()


class FlowAnomalyMap(nn.Module):
    """anomalib's ``AnomalyMapGenerator`` at a fixed grid, written so that every runtime converts it.

    −mean over levels of exp(−½·mean_c z²), each level up-sampled bilinearly to ``grid``. anomalib
    writes the channel mean as ``mean(dim=1, keepdim=True)`` and the level mean as
    ``stack(dim=-1).mean(-1)``; litert-torch lowers both to MEAN + RESHAPE with a constant batch-1
    shape, so a .tflite file fed a batch of 2 or more returned one map. Here the channel mean is a
    fixed 1x1 convolution with weights 1/C and the level mean a sum: the same numbers
    (tests/test_fastflow.py compares it with anomalib's generator), no reshape.
    """

    def __init__(self, channels: Sequence[int], grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.levels = len(channels)
        for level, count in enumerate(channels):
            self.register_buffer(f"mean_weight_{level}", _mean_weight(int(count)), persistent=False)

    def forward(self, hidden: Sequence[torch.Tensor]) -> torch.Tensor:
        total = None
        for level, z in enumerate(hidden):
            probability = torch.exp(-0.5 * _channel_mean(z * z, getattr(self, f"mean_weight_{level}")))
            if tuple(probability.shape[-2:]) != self.grid:
                probability = F.interpolate(probability, size=self.grid, mode="bilinear", align_corners=False)
            total = probability if total is None else total + probability
        return -total / self.levels


class FastFlowNetwork(nn.Module):
    """Frozen feature pyramid → one FastFlow block per level.

    ``hidden_variables(image)`` gives the flows' outputs z and log-Jacobian determinants (training);
    ``forward(image)`` is the exported graph: anomalib's anomaly map (N, 1, h, w) at the finest
    level's grid.
    """

    def __init__(
        self,
        extractor: nn.Module,
        *,
        image_size: int,
        normalise: str = NORMALISE,
        flow_steps: int = FLOW_STEPS,
        hidden_ratio: float = HIDDEN_RATIO,
        conv3x3_only: bool = CONV3X3_ONLY,
    ) -> None:
        super().__init__()
        from anomalib.models.image.fastflow.torch_model import create_fast_flow_block

        self.feature_extractor = extractor
        grids = [(image_size // stride, image_size // stride) for stride in extractor.strides]
        self.norms = nn.ModuleList(
            _norm(normalise, channels, grid) for channels, grid in zip(extractor.channels, grids)
        )
        self.flows = nn.ModuleList(
            create_fast_flow_block(
                [channels, *grid],
                conv3x3_only=conv3x3_only,
                hidden_ratio=hidden_ratio,
                flow_steps=flow_steps,
                clamp=CLAMP,
            )
            for channels, grid in zip(extractor.channels, grids)
        )
        self.grid = grids[0]
        self.anomaly_map = FlowAnomalyMap(extractor.channels, self.grid)

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's levels (frozen, not normalised)."""
        return self.feature_extractor(image)

    def flow(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: hidden variable z (N, C, h, w) and log|det J| (N,)."""
        hidden, log_jacobians = [], []
        for norm, flow, feature in zip(self.norms, self.flows, features):
            z, log_jacobian = flow(norm(feature))
            hidden.append(z)
            log_jacobians.append(log_jacobian)
        return hidden, log_jacobians

    def hidden_variables(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.flow(self.features(image))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.hidden_variables(image)
        return self.anomaly_map(hidden)


def build_network(config: dict, *, weights: Optional[str] = None, pretrained: bool = False) -> FastFlowNetwork:
    """The network a run's config describes (backbone weights from the run's file unless ``pretrained``)."""
    extractor = build_feature_extractor(
        config["backbone"], layers=config["layers"], weights=weights, pretrained=pretrained
    )
    flow = config["flow"]
    return FastFlowNetwork(
        extractor,
        image_size=int(config["image_size"]),
        normalise=flow["normalise"],
        flow_steps=int(flow["steps"]),
        hidden_ratio=float(flow["hidden_ratio"]),
        conv3x3_only=bool(flow["conv3x3_only"]),
    )


SCORING = MapScoring(build_network, SCORE_RULE, "training (torch flow map + numpy map head)")
load_network, head_for, score_run, evaluate_run = (
    SCORING.load_network,
    SCORING.head_for,
    SCORING.score_run,
    SCORING.evaluate_run,
)


def _cached_features(
    network: FastFlowNetwork, images: np.ndarray, *, batch_size: int, progress: ProgressFn
) -> list[torch.Tensor]:
    """The frozen backbone's levels for every training image, computed once."""
    levels: list[list[torch.Tensor]] = []
    progress("features", 0, len(images))
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            levels.append(network.features(torch.from_numpy(images[start : start + batch_size])))
            progress("features", min(start + batch_size, len(images)), len(images))
    return [torch.cat([batch[i] for batch in levels]).clone() for i in range(len(levels[0]))]


def _fit(
    network: FastFlowNetwork,
    images: np.ndarray,
    schedule: Schedule,
) -> list[float]:
    """Adam (anomalib's lr 1e-3, weight decay 1e-5) on the flows' negative log-likelihood."""
    from anomalib.models.image.fastflow.loss import FastflowLoss

    features = _cached_features(network, images, batch_size=schedule.batch_size, progress=schedule.progress)
    trainable = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=schedule.learning_rate, weight_decay=WEIGHT_DECAY)
    loss_fn = FastflowLoss()
    network.train()

    def step(indices: torch.Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        hidden, log_jacobians = network.flow([level[indices] for level in features])
        loss = loss_fn(hidden, log_jacobians)
        loss.backward()
        optimizer.step()
        return loss.item()

    return train_epochs(step, np.arange(len(images)), schedule)


def train_fastflow(
    data: str | Path | Dataset,
    out: str | Path,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: Optional[str | Path] = None,
    image_size: int = 256,
    epochs: Optional[int] = None,
    batch_size: Optional[int] = None,
    learning_rate: Optional[float] = None,
    layers: Sequence[int] = DEFAULT_LAYERS,
    normalise: str = NORMALISE,
    flow_steps: int = FLOW_STEPS,
    hidden_ratio: float = HIDDEN_RATIO,
    conv3x3_only: bool = CONV3X3_ONLY,
    **run: Unpack[RunArgs],
) -> Run:
    """Train FastFlow's flows on a dataset's normal training images (held-out ones excluded)."""
    how = RunSettings(**run)
    schedule = training_settings(epochs, batch_size, learning_rate, how, defaults=FastflowOptions)
    if image_size < 64 or image_size % 32:
        raise EdgekitError(f"--image-size must be a multiple of 32 and at least 64, not {image_size}")
    if normalise not in NORMALISATIONS:
        raise EdgekitError(f"normalise must be one of {', '.join(NORMALISATIONS)}, not {normalise!r}")
    if flow_steps < 1 or not hidden_ratio > 0:
        raise EdgekitError(f"flow_steps must be at least 1 and hidden_ratio positive, not {flow_steps}, {hidden_ratio}")
    extractor = build_feature_extractor(backbone, layers=layers, weights=weights)  # before the seed, as always

    def fit(writer, dataset, trained: list, held: list) -> Fitted:
        # after the engine's seed: the flows' fixed channel permutations and initial weights
        network = FastFlowNetwork(
            extractor,
            image_size=image_size,
            normalise=normalise,
            flow_steps=flow_steps,
            hidden_ratio=hidden_ratio,
            conv3x3_only=conv3x3_only,
        )
        spec = how.input(input_spec_for(backbone, image_size))
        history = _fit(network, prepare(trained, spec), schedule)
        network.eval()
        writer.save_network(SCORING.network_file, network)
        config = {
            "model": "fastflow",
            "backbone": backbone,
            "layers": list(extractor.layers),
            "weights": None if weights is None else str(Path(weights).resolve()),
            "image_size": image_size,
            "head": dict(SCORE_RULE),
            "flow": {
                "normalise": normalise,
                "steps": flow_steps,
                "hidden_ratio": hidden_ratio,
                "conv3x3_only": conv3x3_only,
                "clamp": CLAMP,
            },
            "map_grid": list(network.grid),
            "seed": how.seed,
            "epochs": schedule.epochs,
            "batch_size": schedule.batch_size,
            "learning_rate": schedule.learning_rate,
            "weight_decay": WEIGHT_DECAY,
            "parameters": parameter_count(network),
            "trainable_parameters": int(sum(p.numel() for p in network.parameters() if p.requires_grad)),
        }
        return Fitted(config, spec, network, {"epochs": schedule.epochs, "loss": history, "final_loss": history[-1]})

    return build_run(data, out, how, fit=fit, evaluate=evaluate_run)
