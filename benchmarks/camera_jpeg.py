"""What a camera's JPEG compression does to a bundle's decisions, and what `edgekit fit` on camera frames undoes.

    python3 benchmarks/camera_jpeg.py [--workdir DIR] [--texture brick] [--qualities 95,85,75]

Cameras and streams hand over JPEG (MJPEG, or H.264 with similar artefacts), while the bundle's
thresholds were fitted on the lossless training images. For each JPEG quality this scores the
test split (normals and synthetic defects) after a JPEG round trip with (a) the bundle as exported
and (b) the bundle re-fitted with `edgekit fit` on the training normals after the same round trip,
as a user would after recording normal frames from the camera. Printed: the threshold, the share
of normal test images flagged, the share of defects found, and image AUROC (threshold-free).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekit.fit import fit_bundle  # noqa: E402
from edgekit.metrics import image_auroc  # noqa: E402
from edgekit.runtime.detector import load  # noqa: E402


def _jpeg(pixels: np.ndarray, quality: int | None) -> np.ndarray:
    if quality is None:
        return pixels
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _prepare(workdir: Path, texture: str) -> tuple[Path, Path]:
    from edgekit.data.synth import synthesize
    from edgekit.export.pipeline import export_run
    from edgekit.families.patchcore.train import train_patchcore

    bundle = workdir / "x86"
    category = workdir / "data" / texture
    if not (bundle / "manifest.json").is_file():
        (category,) = synthesize(workdir / "data", texture=texture, seed=0, overwrite=True)
        run = train_patchcore(category, workdir / "run", overwrite=True)
        export_run(run.path, bundle, target="x86", overwrite=True)
    return category, bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="Keep data, run and bundles here.")
    parser.add_argument("--texture", default="brick", choices=["brick", "grass", "gravel"])
    parser.add_argument("--qualities", default="95,85,75", help="JPEG qualities (camera frames).")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgekit-camera-jpeg-"))
    category, bundle = _prepare(workdir, args.texture)
    qualities = [None] + [int(q) for q in args.qualities.split(",")]
    tests = sorted((category / "test").glob("*/*.png"))
    labels = np.array([p.parent.name != "good" for p in tests])
    normals = sorted((category / "train" / "good").glob("*.png"))
    bundles = {"as exported": bundle}
    for quality in qualities[1:]:  # re-fit on the training normals as the camera would deliver them
        frames = workdir / f"camera_q{quality}"
        frames.mkdir(exist_ok=True)
        for path in normals:
            Image.fromarray(_jpeg(_rgb(path), quality)).save(frames / f"{path.stem}.png")
        bundles[f"fit on q{quality} frames"] = fit_bundle(
            bundle, frames, out=workdir / f"fit_q{quality}", overwrite=True
        ).root
    print(f"{args.texture}: {len(tests)} test images ({labels.sum()} defects); PatchCore x86 fp32")
    print("| bundle | frames | threshold | normals flagged | defects found | image AUROC |")
    print("|---|---|---:|---:|---:|---:|")
    for name, path in bundles.items():
        detector = load(path)
        threshold = detector.manifest.decision.image_threshold
        for quality in qualities:
            raw = np.array([detector.predict(_jpeg(_rgb(p), quality)).raw_score for p in tests])
            flagged = raw > threshold
            print(
                f"| {name} | {'lossless' if quality is None else f'JPEG q{quality}'} | {threshold:.2f} | "
                f"{flagged[~labels].mean():.2f} | {flagged[labels].mean():.2f} | {image_auroc(labels, raw):.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
