"""Reverse Distillation (Deng et al., 2022; anomalib's ``reverse_distillation``): networks, training
and training-path scoring.

A frozen encoder gives three pyramid levels; a trainable one-class bottleneck (OCBE) fuses them and
a trainable decoder reconstructs them in reverse. Trained on normal images only, the decoder fails
to reproduce the encoder where an image is anomalous (loss: anomalib's ``ReverseDistillationLoss``).
The exported graph (:class:`ReverseDistillationNetwork`) ends in the anomaly map at the shallowest
level's grid (per level 1 − cosine similarity, summed), so the device's numpy MapHead only resizes,
blurs and scores it. Bottleneck and decoder are anomalib's, generalised to any three levels, with a
1×1 read-out per decoder stage because Lite0's levels are signed and a ReLU output is not.
SCORE_RULE, the default epochs (ReverseDistillationOptions) and their measurements: docs/training.md, "Reverse Distillation".
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from edgekit.data.datasets import Dataset
from edgekit.errors import EdgekitError
from edgekit.families.reverse_distillation.options import ReverseDistillationOptions
from edgekit.preprocess import prepare
from edgekit.train.backbones import DEFAULT_BACKBONE, build_feature_extractor, get_backbone_spec
from edgekit.train.engine import Fitted, RunArgs, RunSettings, build_run
from edgekit.train.inputs import input_spec_for
from edgekit.train.maps import MapScoring, Schedule, parameter_count, train_epochs, training_settings
from edgekit.train.run import Run

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: Encoder levels (strides 4, 8, 16), as anomalib's layer1..layer3 of a ResNet.
LAYERS = (1, 2, 3)
MAP_MODES = ("add", "multiply")
#: anomalib's default; "multiply" measured no better (docs/training.md).
MAP_MODE = "add"
#: The map head: blur σ = 4 px as anomalib; the rule measured in docs/training.md.
SCORE_RULE = {"score": "top_mean", "top_fraction": 0.01, "blur_sigma": 4.0}
#: anomalib's optimiser: Adam, lr 0.005, betas (0.5, 0.99).
BETAS = (0.5, 0.99)
#: 5 epochs = 30 Adam steps on the 48 default images (AUROC by epochs in docs/training.md). Cost
#: measured single-threaded (process time, so load-independent): 0.2 s per step of 8 images + 0.34 s
#: per 8 images through the frozen encoder, which runs once per training image (levels cached).
BLOCKS_PER_STAGE = 2  # as anomalib's ResNet-18 bottleneck and decoder


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


def _init_like_anomalib(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.constant_(layer.weight, 1)
            nn.init.constant_(layer.bias, 0)


class OneClassBottleneck(nn.Module):
    """anomalib's OCBE for three levels of any channels (c0, c1, c2): (N, 2·c2, S/32, S/32) code."""

    def __init__(self, channels: Sequence[int], *, blocks: int = BLOCKS_PER_STAGE) -> None:
        super().__init__()
        c0, c1, c2 = (int(c) for c in channels)
        self.conv1, self.bn1 = _conv3x3(c0, c1, 2), nn.BatchNorm2d(c1)
        self.conv2, self.bn2 = _conv3x3(c1, c2, 2), nn.BatchNorm2d(c2)
        self.conv3, self.bn3 = _conv3x3(c1, c2, 2), nn.BatchNorm2d(c2)
        self.relu = nn.ReLU(inplace=True)
        code = 2 * c2
        downsample = nn.Sequential(nn.Conv2d(3 * c2, code, 1, stride=2, bias=False), nn.BatchNorm2d(code))
        self.bn_layer = nn.Sequential(
            BasicBlock(3 * c2, code, 2, downsample), *(BasicBlock(code, code) for _ in range(1, blocks))
        )
        _init_like_anomalib(self)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        level0 = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(features[0]))))))
        level1 = self.relu(self.bn3(self.conv3(features[1])))
        return self.bn_layer(torch.cat([level0, level1, features[2]], 1))


class ReverseDecoder(nn.Module):
    """anomalib's ResNet decoder (three up-sampling stages of DecoderBasicBlocks) for any channels,
    plus a 1×1 read-out per level; returns the reconstructed levels shallow → deep."""

    def __init__(self, channels: Sequence[int], *, blocks: int = BLOCKS_PER_STAGE) -> None:
        super().__init__()
        from anomalib.models.components.backbone.resnet_decoder import DecoderBasicBlock

        c0, c1, c2 = (int(c) for c in channels)
        stages, inplanes = [], 2 * c2
        for planes in (c2, c1, c0):
            upsample = nn.Sequential(
                nn.ConvTranspose2d(inplanes, planes, 2, stride=2, bias=False), nn.BatchNorm2d(planes)
            )
            stages.append(
                nn.Sequential(
                    DecoderBasicBlock(inplanes, planes, 2, upsample),
                    *(DecoderBasicBlock(planes, planes) for _ in range(1, blocks)),
                )
            )
            inplanes = planes
        self.layer1, self.layer2, self.layer3 = stages
        _init_like_anomalib(self)
        self.readout = nn.ModuleList(nn.Conv2d(c, c, 1) for c in (c0, c1, c2))

    def stages(self, code: torch.Tensor) -> list[torch.Tensor]:
        """The three stage outputs shallow → deep (anomalib's decoder output)."""
        feature_a = self.layer1(code)
        feature_b = self.layer2(feature_a)
        return [self.layer3(feature_b), feature_b, feature_a]

    def forward(self, code: torch.Tensor) -> list[torch.Tensor]:
        return [readout(stage) for readout, stage in zip(self.readout, self.stages(code))]


def cosine_distance(encoder: torch.Tensor, decoder: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 − cosine similarity along the channels, (N, 1, h, w): ``1 - F.cosine_similarity`` written
    with plain ops (multiply, sum, sqrt, divide) that every export target converts."""
    dot = (encoder * decoder).sum(dim=1, keepdim=True)
    squared = (encoder * encoder).sum(dim=1, keepdim=True).clamp_min(eps * eps) * (decoder * decoder).sum(
        dim=1, keepdim=True
    ).clamp_min(eps * eps)
    return 1.0 - dot / torch.sqrt(squared)


class ReverseDistillationNetwork(nn.Module):
    """Frozen encoder + trainable bottleneck and decoder. ``forward`` (what is exported) gives the
    anomaly map (N, 1, S/4, S/4); ``features`` gives (encoder levels, decoder levels) for the loss."""

    def __init__(self, encoder: nn.Module, *, map_mode: str = MAP_MODE) -> None:
        super().__init__()
        if map_mode not in MAP_MODES:
            raise EdgekitError(f"reverse distillation map mode must be one of {', '.join(MAP_MODES)}, not {map_mode!r}")
        self.encoder = encoder
        self.bottleneck = OneClassBottleneck(encoder.channels)
        self.decoder = ReverseDecoder(encoder.channels)
        self.map_mode = map_mode

    def features(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        encoded = self.encoder(image)
        return encoded, self.decode(encoded)

    def decode(self, encoded: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.decoder(self.bottleneck(encoded))

    def anomaly_map(self, encoded: Sequence[torch.Tensor], decoded: Sequence[torch.Tensor]) -> torch.Tensor:
        grid = tuple(encoded[0].shape[-2:])
        combined = None
        for encoder_level, decoder_level in zip(encoded, decoded):
            distance = cosine_distance(encoder_level, decoder_level)
            if tuple(distance.shape[-2:]) != grid:
                distance = F.interpolate(distance, size=grid, mode="bilinear", align_corners=True)
            if combined is None:
                combined = distance
            else:
                combined = combined * distance if self.map_mode == "multiply" else combined + distance
        return combined

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.anomaly_map(*self.features(image))


def build_network(
    config: dict, *, weights: Optional[Path] = None, pretrained: bool = True
) -> ReverseDistillationNetwork:
    encoder = build_feature_extractor(
        config["backbone"], layers=tuple(config["layers"]), weights=weights, pretrained=pretrained
    )
    return ReverseDistillationNetwork(encoder, map_mode=str(config.get("map_mode", MAP_MODE)))


SCORING = MapScoring(
    lambda config: build_network(config, pretrained=False), SCORE_RULE, "training (torch anomaly map + numpy map head)"
)
load_network, head_for, score_run, evaluate_run = (
    SCORING.load_network,
    SCORING.head_for,
    SCORING.score_run,
    SCORING.evaluate_run,
)


def _encode(network: ReverseDistillationNetwork, images: np.ndarray, batch_size: int) -> list[torch.Tensor]:
    """The frozen encoder's levels of all prepared training images, computed once (no augmentation)."""
    levels: list[list[torch.Tensor]] = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            levels.append(network.encoder(torch.from_numpy(images[start : start + batch_size])))
    return [torch.cat([batch[i] for batch in levels]).clone() for i in range(len(levels[0]))]


def fit(
    network: ReverseDistillationNetwork,
    images: np.ndarray,
    schedule: Schedule,
) -> list[float]:
    """Train the bottleneck and decoder with anomalib's loss and optimiser; returns the loss per epoch."""
    from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss

    loss_fn = ReverseDistillationLoss()
    encoded = _encode(network, images, schedule.batch_size)
    trainable = list(network.bottleneck.parameters()) + list(network.decoder.parameters())
    optimizer = torch.optim.Adam(trainable, lr=schedule.learning_rate, betas=BETAS)

    def step(indices: torch.Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        targets = [level[indices] for level in encoded]
        loss = loss_fn(targets, network.decode(targets))
        loss.backward()
        optimizer.step()
        return float(loss.item())

    network.bottleneck.train()
    network.decoder.train()
    try:  # train_epochs shuffles the image indices; step looks their cached encoder levels up
        return train_epochs(step, np.arange(len(images)), schedule, min_batch=2)
    finally:
        network.eval()


def train_reverse_distillation(
    data: str | Path | Dataset,
    out: str | Path,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: Optional[Path] = None,
    image_size: int = 256,
    epochs: Optional[int] = None,
    batch_size: Optional[int] = None,
    learning_rate: Optional[float] = None,
    **run: Unpack[RunArgs],
) -> Run:
    """Train Reverse Distillation's bottleneck and decoder on a dataset's normal training images."""
    how = RunSettings(**run)
    schedule = training_settings(
        epochs, batch_size, learning_rate, how, defaults=ReverseDistillationOptions, min_batch=2, why=" (BatchNorm)"
    )
    if image_size < 64 or image_size % 32:
        raise EdgekitError(
            f"--image-size must be a multiple of 32 and at least 64 for reverse distillation "
            f"(its code is at stride 32), not {image_size}"
        )
    get_backbone_spec(backbone)
    config = {
        "model": "reverse_distillation",
        "backbone": backbone,
        "layers": list(LAYERS),
        "image_size": image_size,
        "map_mode": MAP_MODE,
        "epochs": schedule.epochs,
        "batch_size": schedule.batch_size,
        "learning_rate": schedule.learning_rate,
        "betas": list(BETAS),
        "seed": how.seed,
        "head": dict(SCORE_RULE),
    }

    def fit_run(writer, dataset, trained: list, held: list) -> Fitted:
        network = build_network(config, weights=weights)
        spec = how.input(input_spec_for(backbone, image_size))
        history = fit(network, prepare(trained, spec), schedule)
        writer.save_network(SCORING.network_file, network)
        return Fitted(
            {
                **config,
                "parameters": parameter_count(network),
                "trainable_parameters": parameter_count(network.bottleneck) + parameter_count(network.decoder),
                "map_grid": [image_size // 4, image_size // 4],
            },
            spec,
            network,
            {"epochs": schedule.epochs, "loss": history, "final_loss": history[-1]},
        )

    return build_run(data, out, how, fit=fit_run, evaluate=evaluate_run)
