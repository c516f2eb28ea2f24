"""``edgekit fit``: a new (or extended) memory bank from normal images, on the device, without torch.

A camera installer whose product line changed points the bundle at a folder of normal images.
They are split (seeded) into bank images and held-out images, as training splits its normals;
the bank images go through the bundle's own network with its own runtime — PCA included, as it
is folded into the network — and the same greedy k-center coreset and bank storage as training
and export; the thresholds are then re-fitted on the held-out images with the new bank. The
network files are copied byte for byte; the new bundle is written atomically.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edgekit.bundle import Bundle, save_bundle
from edgekit.clock import created_time
from edgekit.compress.coreset import coreset_count, coreset_indices
from edgekit.compress.pca import BankSettings, compress_bank
from edgekit.data.splits import split_normals
from edgekit.errors import EdgekitError
from edgekit.preprocess import ImageLike, stitch
from edgekit.progress import ProgressFn, noop
from edgekit.runtime.decision import ThresholdRule, fit_decision
from edgekit.runtime.heads import KnnHead, build_head

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
HEAD_DIR = "head"


def list_normals(source: Path) -> list[Path]:
    """The normal images to fit on: the image files directly inside a folder, sorted by name, or
    the training normals of any dataset layout edgekit reads (a .csv/.json list, an MVTec category,
    a good/ + defect folders tree, ...)."""
    source = Path(source)
    if not source.exists():
        raise EdgekitError(f"{source}: no such folder of normal images")
    if source.is_dir():
        images = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            return images
    from edgekit.data.datasets import open_dataset

    try:
        return [sample.path for sample in open_dataset(source).train]
    except EdgekitError as exc:
        if source.is_dir():
            raise EdgekitError(f"{source} holds no images ({', '.join(IMAGE_SUFFIXES)}) and is no dataset") from None
        raise exc from None


def embed_images(
    detector, images: Sequence[ImageLike], *, batch_size: int = 8, progress: ProgressFn = noop, stage: str = "embedding"
) -> np.ndarray:
    """The bundle's network output for images, through its own pre-processing and runtime."""
    outputs = []
    progress(stage, 0, len(images))
    for start in range(0, len(images), batch_size):
        outputs.append(np.asarray(detector.embed(images[start : start + batch_size]), dtype=np.float32))
        progress(stage, min(start + batch_size, len(images)), len(images))
    return np.concatenate(outputs)


def _patches(embeddings: np.ndarray) -> np.ndarray:
    return embeddings.transpose(0, 2, 3, 1).reshape(-1, embeddings.shape[1])


def fit_bundle(
    bundle: str | Path,
    normals: str | Path,
    *,
    out: Optional[str | Path] = None,
    add: bool = False,
    holdout: float = 0.2,
    seed: Optional[int] = None,
    batch_size: int = 8,
    overwrite: bool = False,
    threshold_rule: Optional[str] = None,
    progress: ProgressFn = noop,
) -> Bundle:
    """Build (or, with ``add``, extend) a bundle's bank from normal images and re-fit its thresholds.

    ``out`` None replaces ``bundle`` in place (atomically). ``seed`` defaults to the bundle's
    training seed, so the split and the coreset are those training would make.
    ``threshold_rule`` defaults to the bundle's own; the runtime here is recorded with it.
    """
    from edgekit.bundle import load_bundle
    from edgekit.runtime.detector import load

    source = Path(bundle)
    dest = Path(out) if out is not None else source
    if out is not None and dest.exists() and not overwrite and dest.resolve() != source.resolve():
        raise EdgekitError(f"{dest} already exists; choose another --out or pass --overwrite")
    created = created_time()  # honours SOURCE_DATE_EPOCH; a bad value is refused before any work
    detector = load(source)
    manifest = detector.manifest
    if manifest.head.kind != "knn" or not isinstance(detector.head, KnnHead):
        raise EdgekitError(f"bundle {source}: fitting a bank needs a kNN (PatchCore) head, not {manifest.head.kind!r}")
    params = dict(manifest.head.params)
    bank_info = dict(params.get("bank") or {})
    dtype = str(bank_info.get("dtype", "float32"))
    stored = dict(bank_info.get("settings") or {})
    settings = BankSettings(
        dims=str(stored.get("dims", "full")),
        dtype=dtype,
        size=stored.get("size"),
        share=stored.get("share"),
        most=stored.get("most"),
    )
    ratio = float(params.get("coreset_ratio", 0.1))
    fixed_rows = params.get("coreset_rows")  # a bank trained at a fixed size keeps it
    if fixed_rows is not None and (isinstance(fixed_rows, bool) or not isinstance(fixed_rows, int) or fixed_rows < 1):
        raise EdgekitError(f"bundle {source}: head param coreset_rows must be a positive integer, not {fixed_rows!r}")
    seed = int(params.get("seed", 0)) if seed is None else seed

    images = list_normals(Path(normals))
    bank_idx, held_idx = split_normals(len(images), holdout, seed)
    rule = ThresholdRule.parse(threshold_rule or manifest.decision.rule)
    rule.check(len(held_idx), anomalies=0)  # before embedding: fit has normals only
    embeddings = embed_images(detector, images, batch_size=batch_size, progress=progress)
    per_image = embeddings.reshape(len(images), -1, *embeddings.shape[1:])  # a tiled input's tiles per image

    def outputs_of(indices: list[int]) -> np.ndarray:
        return per_image[indices].reshape(-1, *embeddings.shape[1:])

    patches = _patches(outputs_of(bank_idx))
    count = coreset_count(len(patches), ratio, rows=fixed_rows)
    old_bank = detector.head.memory_bank if add else None
    chosen = coreset_indices(
        patches, count, seed=seed, covered_by=old_bank, progress=lambda done, total: progress("coreset", done, total)
    )
    rows = patches[chosen] if old_bank is None else np.concatenate([old_bank, patches[chosen]])
    coreset_rows = count + (int(bank_info.get("coreset_rows", len(old_bank))) if old_bank is not None else 0)
    feature_dims = int(bank_info.get("feature_dims", patches.shape[1]))
    size = settings.rows(coreset_rows, feature_dims, patches.shape[1])
    compressed = compress_bank(rows, dtype=dtype, size=size, seed=seed, feature_dims=feature_dims)

    bank_info.update(
        {
            key: value
            for key, value in compressed.description.items()
            if key in ("rows", "dims", "dtype", "reselected_from", "quantization")
        }
    )
    bank_info["coreset_rows"] = coreset_rows
    bank_info["smaller_than_uncompressed"] = round(coreset_rows * feature_dims * 4 / compressed.nbytes, 2)
    bank_info["bytes"] = compressed.nbytes
    fitted = {
        "images": len(bank_idx),
        "held_out": len(held_idx),
        "folder": str(Path(normals).resolve()),
        "patches": int(len(patches)),
        "added_rows": int(count),
        "add": bool(add),
        "seed": seed,
        "created": created,
    }
    if old_bank is not None:
        fitted["previous_rows"] = int(len(old_bank))  # before any re-thinning of the union
    params["bank"] = {**bank_info, "fitted": fitted}
    paths = {name: f"{HEAD_DIR}/{name}.npy" for name in compressed.arrays}
    spec = manifest.input
    head = build_head(manifest.head.kind, params, compressed.arrays, output_height=spec.height, output_width=spec.width)
    progress("fit thresholds", 0, len(held_idx))
    scores, maps = stitch(*head(outputs_of(held_idx)), spec)
    progress("fit thresholds", len(held_idx), len(held_idx))
    head_spec = dataclasses.replace(manifest.head, params=params, arrays=paths)
    new_manifest = dataclasses.replace(
        manifest,
        head=head_spec,
        decision=fit_decision(scores, maps, rule=rule, fitted_with=detector.runtime_identity),
        export={**manifest.export, "bank": params["bank"]},
    )
    files = {name: detector.bundle.path(name) for name in manifest.network.files}
    save_bundle(
        dest,
        new_manifest,
        files=files,
        arrays={paths[name]: array for name, array in compressed.arrays.items()},
        overwrite=overwrite or dest == source,
    )
    return load_bundle(dest)


def refit_thresholds(
    bundle: str | Path,
    dataset,
    rule: str,
    *,
    out: Optional[str | Path] = None,
    overwrite: bool = False,
    batch_size: int = 8,
    progress: ProgressFn = noop,
) -> Bundle:
    """``edgekit threshold``: re-fit a bundle's thresholds by ``rule`` on validation data, here.

    The images are the test split of ``dataset`` (an ``edgekit.data.Dataset``): its normals, and
    for ``f1`` its labelled anomalies. The network and head are copied byte for byte; the manifest
    records the rule, the runtime that scored, and the data (its root, a fingerprint of the images'
    bytes and labels, the counts). ``out`` None replaces ``bundle`` in place (atomically).
    """
    import hashlib

    from edgekit.bundle import load_bundle
    from edgekit.runtime.detector import load

    source = Path(bundle)
    dest = Path(out) if out is not None else source
    if out is not None and dest.exists() and not overwrite and dest.resolve() != source.resolve():
        raise EdgekitError(f"{dest} already exists; choose another --out or pass --overwrite")
    parsed = ThresholdRule.parse(rule)
    normals = [s for s in dataset.test if s.label == 0]
    anomalies = [s for s in dataset.test if s.label == 1]
    parsed.check(len(normals), len(anomalies))  # before scoring: a rule that cannot fire is refused
    detector = load(source)
    manifest = detector.manifest
    samples = normals + (anomalies if parsed.name == "f1" else [])
    scores, maps = [], []
    progress("score validation images", 0, len(samples))
    for start in range(0, len(samples), batch_size):
        batch_scores, batch_maps = detector.raw([s.path for s in samples[start : start + batch_size]])
        scores.append(batch_scores)
        maps.append(batch_maps[: max(0, len(normals) - start)])  # pixel threshold: normal maps only
        progress("score validation images", min(start + batch_size, len(samples)), len(samples))
    scores_all = np.concatenate(scores)
    fingerprint = hashlib.sha256()
    for sample in samples:
        fingerprint.update(f"{sample.label}:{sample.path.name}:".encode())
        fingerprint.update(hashlib.sha256(sample.path.read_bytes()).digest())
    validation = {
        "data": str(dataset.root.resolve()),
        "layout": dataset.layout,
        "split": "test",
        "fingerprint": f"sha256:{fingerprint.hexdigest()}",
        "normals": len(normals),
        "anomalies": len(anomalies) if parsed.name == "f1" else 0,
    }
    decision = fit_decision(
        scores_all[: len(normals)],
        np.concatenate(maps),
        rule=parsed,
        anomalous_scores=scores_all[len(normals) :],
        fitted_with=detector.runtime_identity,
        validation=validation,
    )
    files = {name: detector.bundle.path(name) for name in manifest.network.files}
    arrays = {path: detector.bundle.array(name) for name, path in manifest.head.arrays.items()}
    save_bundle(
        dest,
        dataclasses.replace(manifest, decision=decision),
        files=files,
        arrays=arrays,
        overwrite=overwrite or dest == source,
    )
    detector.close()
    return load_bundle(dest)
