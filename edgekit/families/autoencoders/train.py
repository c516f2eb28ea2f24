"""The two home-made autoencoders (SAE, DAE): networks, training and training-path scoring.

Both reconstruct a grey image in [0, 1] (pre-processing mean 0, std 1, so the Sigmoid output and
the input share one scale). The anomaly map, the per-pixel squared error (x − x̂)², is computed
inside the exported graph (:class:`ErrorMapNetwork`), so the device only post-processes it with
:class:`edgekit.runtime.heads.MapHead`, the same numpy code the training path runs. SCORE_RULE, one
for both models: the mean of the top 1 % of the map after a σ = 4 px blur; unlike a whole-image
mean it does not dilute a small defect, and the blur lifts the pixel AUROC. AUROC by rule:
docs/training.md, "SAE and DAE".
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.data.datasets import Dataset
from edgekit.errors import EdgekitError
from edgekit.families.autoencoders.options import DaeOptions, SaeOptions
from edgekit.preprocess import ImageLike, InputSpec, prepare
from edgekit.progress import ProgressFn, noop
from edgekit.train.engine import Fitted, RunArgs, RunSettings, build_run
from edgekit.train.maps import MapScoring, Schedule, map_outputs, parameter_count, training_settings
from edgekit.train.run import Run

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: The map head of both autoencoders (manifest head params; see the module docstring for why).
SCORE_RULE = {"score": "top_mean", "top_fraction": 0.01, "blur_sigma": 4.0}
SAE_LATENT, DAE_LATENT = 64, 128
SAE_SPARSITY = 0.001  # weight of the latent code's L1 norm in the SAE loss
DAE_SSIM_WEIGHT = 0.1  # weight of (1 - SSIM) in the DAE loss


def _conv_bn(conv: nn.Module, channels: int, activation: nn.Module) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), activation]


class SparseAutoencoder(nn.Module):
    """Two stride-2 convolutions → FC bottleneck (64) → FC → two stride-2 transposed convolutions.

    (N, 1, S, S) → reconstruction (N, 1, S, S) in [0, 1] and the latent code (N, 64); at S = 128
    the fully connected layers are 65536 → 64 → 65536.
    """

    def __init__(self, image_size: int = 128, latent: int = SAE_LATENT) -> None:
        super().__init__()
        self.grid = image_size // 4
        flat = 64 * self.grid * self.grid
        self.encoder = nn.Sequential(
            *_conv_bn(nn.Conv2d(1, 32, 4, stride=2, padding=1), 32, nn.ReLU()),
            *_conv_bn(nn.Conv2d(32, 64, 4, stride=2, padding=1), 64, nn.ReLU()),
        )
        self.bottleneck = nn.Linear(flat, latent)
        self.expand = nn.Linear(latent, flat)
        self.decoder = nn.Sequential(
            *_conv_bn(nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), 32, nn.ReLU()),
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.bottleneck(torch.flatten(self.encoder(image), 1))
        features = self.expand(code).reshape(-1, 64, self.grid, self.grid)
        return self.decoder(features), code


class DeepAutoencoder(nn.Module):
    """Four encoder stages (a stride-2 4×4 convolution, then a 3×3 one, each + BN + LeakyReLU(0.2);
    1→32→64→128→256 channels, S → S/16), FC bottleneck (128), four decoder stages (stride-2
    transposed convolution, 3×3 convolution, BN, ReLU; 256→128→64→32→32) and a 3×3 convolution to
    one channel + Sigmoid. At S = 128 the fully connected layers are 16384 → 128 → 16384.

    Down-sampling first in each stage keeps the 3×3 convolutions at the smaller resolution.
    """

    def __init__(self, image_size: int = 128, latent: int = DAE_LATENT) -> None:
        super().__init__()
        self.grid = image_size // 16
        flat = 256 * self.grid * self.grid
        encoder: list[nn.Module] = []
        for c_in, c_out in ((1, 32), (32, 64), (64, 128), (128, 256)):
            encoder += _conv_bn(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), c_out, nn.LeakyReLU(0.2))
            encoder += _conv_bn(nn.Conv2d(c_out, c_out, 3, padding=1), c_out, nn.LeakyReLU(0.2))
        self.encoder = nn.Sequential(*encoder)
        self.bottleneck = nn.Linear(flat, latent)
        self.expand = nn.Linear(latent, flat)
        decoder: list[nn.Module] = []
        for c_in, c_out in ((256, 128), (128, 64), (64, 32), (32, 32)):
            decoder.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            decoder += _conv_bn(nn.Conv2d(c_out, c_out, 3, padding=1), c_out, nn.ReLU())
        self.decoder = nn.Sequential(*decoder, nn.Conv2d(32, 1, 3, padding=1), nn.Sigmoid())

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.bottleneck(torch.flatten(self.encoder(image), 1))
        features = self.expand(code).reshape(-1, 256, self.grid, self.grid)
        return self.decoder(features), code


class ErrorMapNetwork(nn.Module):
    """What is exported: image → reconstruction → per-pixel squared error (N, 1, H, W)."""

    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        difference = image - self.autoencoder(image)[0]
        return difference * difference


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    taps = torch.exp(-0.5 * ((torch.arange(size, dtype=torch.float32) - (size - 1) / 2) / sigma) ** 2)
    return taps / taps.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity of two (N, 1, H, W) batches in [0, 1] (differentiable).

    Local statistics under an 11×11 Gaussian window (σ 1.5, applied as two 1-D passes, valid
    region only), constants C1 = 0.01², C2 = 0.03² for a data range of 1 (Wang et al., 2004).
    """
    taps = _gaussian_window(window, sigma).to(x)
    rows, cols = taps.reshape(1, 1, -1, 1), taps.reshape(1, 1, 1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, rows), cols)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.mean()


def sae_loss(image: torch.Tensor, reconstruction: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """MSE + 0.001 × the latent code's L1 norm (summed over its 64 units, averaged over the batch)."""
    return F.mse_loss(reconstruction, image) + SAE_SPARSITY * code.abs().sum(dim=1).mean()


def dae_loss(image: torch.Tensor, reconstruction: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """MSE + 0.1 × (1 − SSIM)."""
    return F.mse_loss(reconstruction, image) + DAE_SSIM_WEIGHT * (1.0 - ssim(reconstruction, image))


#: model name -> (network class, loss, default epochs, batch size, learning rate). Measured on the 48
#: grey 128² brick training images, 2 cores: the SAE's reconstruction MSE is 0.0118 after 20 epochs
#: at 3e-3 (0.0152 at 1e-3) and 0.0109 after 40; after that it starts memorising the 48 images
#: (0.0015 after 80), so its training loss is no stopping guide there. The DAE's loss is flat from
#: epoch 5 on (MSE 0.0111). Train times (idle machine): SAE 10 s, DAE 15 s; 28 s and 69 s while
#: another job used a core.
MODELS: dict[str, tuple[type, Callable, type]] = {
    "sae": (SparseAutoencoder, sae_loss, SaeOptions),
    "dae": (DeepAutoencoder, dae_loss, DaeOptions),
}


def input_spec_for(image_size: int) -> InputSpec:
    """Grey, scaled to [0, 1] (no centring): the Sigmoid reconstructs the input on its own scale."""
    return InputSpec(height=image_size, width=image_size, channels=1, mean=(0.0,), std=(1.0,))


def build_network(config: dict) -> nn.Module:
    network_class = MODELS[config["model"]][0]
    return network_class(image_size=int(config["image_size"]))


def error_maps(
    network: nn.Module,
    images: Sequence[ImageLike],
    spec: InputSpec,
    *,
    batch_size: int = 8,
    progress: ProgressFn = noop,
    stage: str = "scoring",
) -> np.ndarray:
    """The exported graph's output computed in torch: (N, 1, H, W) squared reconstruction errors."""
    error_network = network if isinstance(network, ErrorMapNetwork) else ErrorMapNetwork(network)
    return map_outputs(error_network, images, spec, batch_size=batch_size, progress=progress, stage=stage)


SCORING = MapScoring(build_network, SCORE_RULE, "training (torch error map + numpy map head)", maps=error_maps)
load_network, head_for, score_run, evaluate_run = (
    SCORING.load_network,
    SCORING.head_for,
    SCORING.score_run,
    SCORING.evaluate_run,
)


def _fit(
    model: str,
    network: nn.Module,
    images: np.ndarray,
    schedule: Schedule,
) -> tuple[list[float], list[float]]:
    """Adam on the prepared images, reshuffled each epoch by a seeded generator.

    Returns the mean loss and the mean reconstruction MSE (the loss without its regulariser) per epoch.
    """
    loss_fn = MODELS[model][1]
    optimizer = torch.optim.Adam(network.parameters(), lr=schedule.learning_rate)
    order_rng = torch.Generator().manual_seed(schedule.seed)
    data = torch.from_numpy(images)
    history, mse_history = [], []
    network.train()
    schedule.progress("train", 0, schedule.epochs)
    for epoch in range(schedule.epochs):
        order = torch.randperm(len(data), generator=order_rng)
        total, mse, seen = 0.0, 0.0, 0
        for start in range(0, len(data), schedule.batch_size):
            batch = data[order[start : start + schedule.batch_size]]
            if len(batch) < 2 and seen:  # BatchNorm cannot train on a single image; left out this epoch
                continue
            optimizer.zero_grad(set_to_none=True)
            reconstruction, code = network(batch)
            loss = loss_fn(batch, reconstruction, code)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            mse += F.mse_loss(reconstruction.detach(), batch).item() * len(batch)
            seen += len(batch)
        history.append(round(total / seen, 6))
        mse_history.append(round(mse / seen, 6))
        schedule.progress("train", epoch + 1, schedule.epochs)
    return history, mse_history


def train_autoencoder(
    model: str,
    data: str | Path | Dataset,
    out: str | Path,
    *,
    image_size: int = 128,
    epochs: Optional[int] = None,
    batch_size: Optional[int] = None,
    learning_rate: Optional[float] = None,
    **run: Unpack[RunArgs],
) -> Run:
    """Train ``model`` ("sae" or "dae") on a dataset's normal training images, held-out ones excluded."""
    how = RunSettings(**run)
    schedule = training_settings(
        epochs, batch_size, learning_rate, how, defaults=MODELS[model][2], min_batch=2, why=" (BatchNorm)"
    )
    if image_size < 32 or image_size % 16:
        raise EdgekitError(f"--image-size must be a multiple of 16 and at least 32, not {image_size}")
    config = {
        "model": model,
        "backbone": "none",
        "layers": [],
        "image_size": image_size,
        "epochs": schedule.epochs,
        "batch_size": schedule.batch_size,
        "learning_rate": schedule.learning_rate,
        "seed": how.seed,
        "head": dict(SCORE_RULE),
    }

    def fit(writer, dataset, trained: list, held: list) -> Fitted:
        network = build_network(config)
        spec = how.input(input_spec_for(image_size))
        history, mse_history = _fit(model, network, prepare(trained, spec), schedule)
        network.eval()
        writer.save_network(SCORING.network_file, network)
        return Fitted(
            {**config, "parameters": parameter_count(network)},
            spec,
            network,
            {
                "epochs": schedule.epochs,
                "loss": history,
                "final_loss": history[-1],
                "reconstruction_mse": mse_history,
                "final_reconstruction_mse": mse_history[-1],
            },
        )

    return build_run(data, out, how, fit=fit, evaluate=evaluate_run)


#: The registry's trainers: train_autoencoder with the model named (defaults: MODELS).
train_sae = functools.partial(train_autoencoder, "sae")
train_dae = functools.partial(train_autoencoder, "dae")
