"""The device-side detector: bundle in, predictions out. numpy + the bundle's one runtime."""

from __future__ import annotations

import hashlib
import platform
import warnings
import weakref
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from edgekit.bundle import MANIFEST_NAME, Bundle, Decision, load_bundle
from edgekit.errors import EdgekitError
from edgekit.preprocess import DEFAULT_MAX_PIXELS, ImageLike, prepare, stitch
from edgekit.runtime.backends import Backend, BackendOptions, load_backend
from edgekit.runtime.heads import build_head
from edgekit.runtime.threads import (
    MAX_THREADS,
    MODES,
    Budget,
    HeadPool,
    Lanes,
    single_threaded_blas,
    thread_count,
    usable_cores,
)


@dataclass(frozen=True)
class Prediction:
    """One image's verdict.

    ``score`` and ``anomaly_map`` are normalised so that a typical normal image is 0.0 and the
    bundle's threshold is 0.5 (clipped to [0, 1]); ``raw_score`` is the head's own number, which
    is what AUROC and the thresholds are computed on. The map has the input's ``map_size``: the
    network's input size, or the whole grid of a tiled input.
    """

    score: float
    is_anomalous: bool
    anomaly_map: np.ndarray
    raw_score: float


def normalise(raw: np.ndarray | float, center: float, threshold: float) -> np.ndarray:
    """Linear map with center → 0 and threshold → 0.5, clipped to [0, 1]."""
    span = threshold - center
    if span <= 0:
        span = abs(threshold) or 1.0
    return np.clip(0.5 * (np.asarray(raw, dtype=np.float64) - center) / span, 0.0, 1.0)


#: channel orders an image array may come in; "bgr" is OpenCV's (cv2.imread, VideoCapture.read)
COLOR_ORDERS = ("rgb", "bgr")


class ThresholdWarning(UserWarning):
    """A bundle's thresholds were fitted under another runtime or version than the one loading it."""


class Detector:
    """Runs a bundle: the one pre-processing, the exported network, the numpy head, the decision.

    Image arrays are RGB (or grey) unless ``color="bgr"`` says they come from OpenCV: a BGR frame
    read as RGB swaps red and blue, which a colour model sees as a defect everywhere. Arrays are
    uint8, or float in [0, 1] (scaled by 255; other floats are refused). Image files larger than
    ``max_pixels`` are refused from their header, before decoding. One Detector may be shared by
    several threads. ``budget`` is how many threads it uses and how (see ``load``): images are
    scored, from decoding to decision, on the Detector's own ``max_parallel`` lane threads
    (default: the budget's lanes), so threads sharing a Detector queue for its cores instead of
    oversubscribing them.
    """

    def __init__(
        self,
        bundle: Bundle,
        backend: Backend,
        *,
        budget: Optional[Budget] = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_parallel: int = 0,
    ) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.backend = backend
        spec = self.manifest.input
        arrays = {name: bundle.array(name) for name in self.manifest.head.arrays}
        try:
            self.head = build_head(
                self.manifest.head.kind,
                self.manifest.head.params,
                arrays,
                output_height=spec.height,
                output_width=spec.width,
            )
        except EdgekitError as exc:
            raise EdgekitError(f"bundle {bundle.origin}: {exc}") from None
        self._output_name = self.manifest.network.output_names[0]
        self.budget = budget or Budget.resolve(1, "latency")
        self._head_pool = HeadPool(self.budget.per_lane)
        self.max_parallel = max_parallel or self.budget.lanes
        self._lanes = Lanes(self.max_parallel)
        weakref.finalize(self, self._lanes.close)  # a Detector dropped without close() ends its lanes
        self.max_pixels = max_pixels

    def close(self) -> None:
        """Remove the private copy of a ``.edgekit`` bundle (also done when the Detector is garbage
        collected) and stop its idle threads. The runtime holds the network in memory by then:
        predictions still work."""
        self.bundle.close()
        self._head_pool.close()
        self._lanes.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @cached_property
    def fingerprint(self) -> str:
        """16 hex digits of the sha256 of the bundle's manifest: names exactly this bundle in events."""
        if self.bundle.manifest_sha256:
            return self.bundle.manifest_sha256[:16]
        return hashlib.sha256(self.bundle.path(MANIFEST_NAME).read_bytes()).hexdigest()[:16]

    @property
    def runtime_identity(self) -> dict[str, str]:
        """The runtime computing this Detector's scores (recorded with the thresholds it fits)."""
        return {"runtime": self.manifest.runtime, "version": str(self.backend.version), "machine": platform.machine()}

    @property
    def threshold_note(self) -> Optional[str]:
        """One line when the thresholds were fitted under another runtime or version than this one
        (their scores can differ, int8 ones by up to ~1e-2); None when they match or are not recorded."""
        fitted, here = self.manifest.decision.fitted_with, self.runtime_identity
        if not fitted or (fitted.get("runtime"), fitted.get("version")) == (here["runtime"], here["version"]):
            return None
        return (
            f"bundle {self.bundle.origin}: thresholds were fitted under {fitted.get('runtime')} "
            f"{fitted.get('version')} on {fitted.get('machine', '?')}, this is {here['runtime']} {here['version']} "
            f"on {here['machine']}; scores may differ: re-fit them here with edgekit threshold (or edgekit fit)"
        )

    def run_head(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The numpy head on network outputs: BLAS single-threaded, the work split over the
        Detector's own threads (see ``edgekit.runtime.threads``); a tiled input's tiles stitched
        into one score and map per image."""
        with single_threaded_blas:
            return stitch(*self.head(embeddings, pool=self._head_pool), self.manifest.input)

    def embed(self, images: Iterable[ImageLike], *, color: str = "rgb") -> np.ndarray:
        """The network's output for a batch of images, through the one pre-processing (a tiled
        input's ``tile_count`` outputs per image, in order)."""
        return self._lanes.run(lambda: self.run_network(self._prepare(images, color)))

    def raw(self, images: Iterable[ImageLike], *, color: str = "rgb") -> tuple[np.ndarray, np.ndarray]:
        """Raw image scores (N,) and raw anomaly maps (N, H, W) for a batch of images."""
        return self._lanes.run(lambda: self._raw(images, color))

    def _raw(self, images: Iterable[ImageLike], color: str) -> tuple[np.ndarray, np.ndarray]:
        return self.run_head(self.run_network(self._prepare(images, color)))

    def _prepare(self, images: Iterable[ImageLike], color: str) -> np.ndarray:
        return prepare((_to_rgb(image, color) for image in images), self.manifest.input, max_pixels=self.max_pixels)

    def run_network(self, batch: np.ndarray) -> np.ndarray:
        """The network on a prepared batch; a tiled input runs one row of tiles per call, so memory
        stays that of a few network inputs however many tiles an image has."""
        tiles = self.manifest.input.tiles
        if not tiles:
            return self._infer(batch)
        return np.concatenate(
            [self._infer(batch[start : start + tiles[1]]) for start in range(0, len(batch), tiles[1])]
        )

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        outputs = self.backend.infer({self.manifest.network.input_name: batch})
        if self._output_name not in outputs:
            raise EdgekitError(f"the network did not produce output {self._output_name!r} (it gave {sorted(outputs)})")
        return outputs[self._output_name]

    def decide(self, raw_scores: np.ndarray, raw_maps: np.ndarray) -> list[Prediction]:
        decision: Decision = self.manifest.decision
        scores = normalise(raw_scores, decision.image_center, decision.image_threshold)
        maps = normalise(raw_maps, decision.pixel_center, decision.pixel_threshold).astype(np.float32)
        return [
            Prediction(
                score=float(s), is_anomalous=bool(r > decision.image_threshold), anomaly_map=m, raw_score=float(r)
            )
            for s, r, m in zip(scores, raw_scores, maps)
        ]

    def predict(self, image: ImageLike, *, color: str = "rgb") -> Prediction:
        """Score one image: a file path, or an HxW / HxWxC array (RGB, or BGR with color="bgr")."""
        return self._lanes.run(lambda: self.decide(*self._raw([image], color))[0])

    def predict_batch(
        self, images: Sequence[ImageLike], *, batch_size: int = 8, color: str = "rgb"
    ) -> list[Prediction]:
        """Score many images, ``batch_size`` per network call: one call at a time in latency mode,
        as many at once as the budget has lanes in throughput mode (batches shrink to fill them)."""
        if batch_size < 1:
            raise EdgekitError(f"batch_size must be at least 1, not {batch_size}")
        lanes = self.budget.lanes
        if lanes > 1:
            batch_size = max(1, min(batch_size, -(-len(images) // lanes)))
        groups = [images[start : start + batch_size] for start in range(0, len(images), batch_size)]

        def score(group: Sequence[ImageLike]) -> list[Prediction]:
            return self.decide(*self._raw(group, color))

        return [prediction for group in self._lanes.map(score, groups) for prediction in group]


def _to_rgb(image: ImageLike, color: str) -> ImageLike:
    """A BGR(A) array in RGB order; paths and grey arrays as they are (files are decoded as RGB)."""
    if color not in COLOR_ORDERS:
        raise EdgekitError(f"color must be one of {', '.join(COLOR_ORDERS)}, not {color!r}")
    if color == "bgr" and isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] in (3, 4):
        return image[:, :, 2::-1]
    return image


def load(
    path: str | Path,
    *,
    device: Optional[str] = None,
    threads: Optional[int] = None,
    mode: Optional[str] = None,
    trusted_keys: Optional[Sequence[Any]] = None,
    max_parallel: Optional[int] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Detector:
    """Open and verify a bundle (folder or ``.edgekit``) and load its network with its runtime.

    ``threads``: all the threads this Detector computes with, shared by the runtime and the numpy
    head, never both at once (0 = every usable core; default: the target's, at most the usable cores). ``mode``: "latency"
    runs one image at a time on all of them, "throughput" one image per thread, several at once
    (``predict_batch``, or threads sharing the Detector). ``device`` overrides the target's
    (e.g. ``device="GPU.1"``).
    ``trusted_keys`` (public key files or raw 32-byte Ed25519 keys): refuse a bundle that is not
    signed by one of them (``edgekit sign``).
    ``max_parallel``: how many images are scored at once, each on one of the Detector's lane
    threads with its own OpenVINO infer request or LiteRT interpreter (default: the mode's lanes);
    more callers wait their turn. ``max_pixels`` caps the decoded size of an image file.
    """
    if max_parallel is not None and max_parallel < 1:
        raise EdgekitError(f"max_parallel must be at least 1, not {max_parallel}")
    bundle = load_bundle(Path(path), trusted_keys=trusted_keys)
    try:
        manifest = bundle.manifest
        if threads is None:  # the target's, never more than this machine lets us run at once
            threads = min(
                thread_count(manifest.export.get("threads", 0), f"bundle {path}: export.threads") or MAX_THREADS,
                usable_cores(),
            )
        if mode is None:
            mode = manifest.export.get("mode", "latency")
            if mode not in MODES:
                raise EdgekitError(f"bundle {path}: export.mode must be one of {', '.join(MODES)}, not {mode!r}")
        budget = Budget.resolve(thread_count(threads, "threads"), mode)
        max_parallel = max_parallel or budget.lanes
        options = BackendOptions(
            device=device or manifest.device,
            threads=budget.per_lane,
            lanes=budget.lanes,
            precision=manifest.precision,
            output_names=tuple(manifest.network.output_names),
            max_parallel=max_parallel,
        )
        backend = load_backend(manifest.runtime, bundle.path(manifest.network.files[0]), options)
        detector = Detector(bundle, backend, budget=budget, max_pixels=max_pixels, max_parallel=max_parallel)
        note = detector.threshold_note
        if note:
            warnings.warn(note, ThresholdWarning, stacklevel=2)
        return detector
    except BaseException:
        bundle.close()
        raise
