"""A tiny kNN bundle on the fake runtime: its "network" averages the prepared image over pool×pool
blocks (3-D features), so it loads and predicts with numpy alone, without training, OpenVINO or
torch. The unit tests that need a real bundle on disk build it here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

import edgekit
from edgekit.bundle import SCHEMA_VERSION, Decision, HeadSpec, Manifest, NetworkSpec, save_bundle
from edgekit.preprocess import InputSpec

SPEC = InputSpec(height=16, width=16, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
BANK = "head/memory_bank.npy"
KNN_HEAD = HeadSpec(kind="knn", params={"num_neighbors": 3, "blur_sigma": 1.0}, arrays={"memory_bank": BANK})
DECISION = Decision(
    image_threshold=1.5, pixel_threshold=1.0, image_center=0.0, pixel_center=0.0, method="test", fitted_on=2
)


def knn_manifest(
    spec: InputSpec = SPEC,
    *,
    decision: Optional[Decision] = None,
    precision: str = "fp32",
    head: HeadSpec = KNN_HEAD,
    runtime: str = "fake",
    fmt: str = "fake",
    files: tuple[str, ...] = ("net.json",),
) -> Manifest:
    """The manifest of a kNN bundle for x86: the fake runtime's, or ``runtime``'s with its ``files``."""
    return Manifest(
        schema_version=SCHEMA_VERSION,
        edgekit_version=edgekit.__version__,
        model="patchcore",
        backbone="fake",
        target="x86",
        runtime=runtime,
        device="CPU",
        precision=precision,
        input=spec,
        network=NetworkSpec(format=fmt, files=files, input_name="image", output_names=("embedding",)),
        head=head,
        decision=decision or DECISION,
        source={},
        export={},
    )


def save_knn(
    dest: Path,
    bank: Optional[np.ndarray] = None,
    *,
    spec: InputSpec = SPEC,
    pool: int = 4,
    decision: Optional[Decision] = None,
    precision: str = "fp32",
    head: HeadSpec = KNN_HEAD,
    arrays: Optional[dict[str, np.ndarray]] = None,
    overwrite: bool = False,
    runtime: str = "fake",
    fmt: str = "fake",
    files: Optional[dict[str, Any]] = None,
) -> Path:
    """Write the bundle (a folder, or an archive when ``dest`` ends in .edgekit); ``bank`` defaults
    to 20 seeded 3-D rows, ``arrays`` (path -> array) replaces the bank for other heads, and
    ``files`` (name -> path or bytes) the fake network for a real ``runtime`` and ``fmt``."""
    if arrays is None:
        bank = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32) if bank is None else bank
        arrays = {BANK: bank}
    if files is None:
        files = {"net.json": json.dumps({"pool": pool, "outputs": ["embedding"]}).encode()}
    manifest = knn_manifest(
        spec, decision=decision, precision=precision, head=head, runtime=runtime, fmt=fmt, files=tuple(files)
    )
    return save_bundle(dest, manifest, files=files, arrays=arrays, overwrite=overwrite)
