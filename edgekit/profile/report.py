"""``edgekit profile``: measure a bundle here and write ``profile.json`` and ``profile.md``."""
from __future__ import annotations

import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np

from edgekit import __version__
from edgekit.errors import EdgekitError
from edgekit.progress import ProgressFn, noop

#: `platform.machine()` values that can run each target family natively.
_HOST_MACHINES = {"openvino": {"x86_64", "AMD64"}}


def profile_bundle(bundle_path: str | Path, *, target: str, out: str | Path, data: Optional[str | Path] = None,
                   runs: int = 100, warmup: int = 10, cold_starts: int = 3,
                   progress: ProgressFn = noop) -> dict:
    """Measure a bundle on this machine; returns the profile and writes the two report files."""
    from edgekit.export.targets import get_target
    from edgekit.preprocess import read_image, resize
    from edgekit.profile.measure import describe_device, measure_accuracy, measure_cold_start, measure_latency
    from edgekit.runtime.detector import load

    spec = get_target(target)
    machine = platform.machine()
    allowed = _HOST_MACHINES.get(spec.runtime)
    if allowed is not None and machine not in allowed:
        raise EdgekitError(f"this machine is {machine}, which cannot run target {spec.name!r}; run `edgekit profile` on the device itself")
    detector = load(bundle_path)
    manifest = detector.manifest
    if manifest.target != spec.name:
        raise EdgekitError(f"bundle {bundle_path} was exported for {manifest.target!r}, not {spec.name!r}")
    dataset = None
    if data is not None:
        from edgekit.data.datasets import open_dataset

        dataset = open_dataset(Path(data))
    sample = _sample_image(dataset, manifest)
    image = resize(read_image(sample, manifest.input.channels), manifest.input.height, manifest.input.width)
    latency = measure_latency(detector, image, warmup=warmup, runs=runs, progress=progress)
    with tempfile.TemporaryDirectory() as tmp:
        sample_png = Path(tmp) / "sample.png"
        _write_png(image, sample_png)
        progress("cold start", 0, cold_starts)
        cold = measure_cold_start(Path(bundle_path), sample_png, repeats=cold_starts)
        progress("cold start", cold_starts, cold_starts)
    accuracy = measure_accuracy(detector, dataset, progress=progress) if dataset is not None else None
    size = detector.bundle.size_bytes()
    profile = {
        "edgekit_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bundle": {"path": str(Path(bundle_path).resolve()), "model": manifest.model, "backbone": manifest.backbone,
                   "target": manifest.target, "precision": manifest.precision, "runtime": manifest.runtime,
                   "size_bytes": size, "input": f"{manifest.input.width}x{manifest.input.height}x{manifest.input.channels}"},
        "device": describe_device(detector.backend.name, detector.backend.version),
        "latency": latency, "cold_start": cold, "accuracy": accuracy,
        "data": str(Path(data).resolve()) if data is not None else None,
        "estimate": False,
    }
    write_reports(profile, Path(out))
    return profile


def _sample_image(dataset, manifest) -> Path | np.ndarray:
    if dataset is not None and dataset.test:
        return dataset.test[0].path
    if dataset is not None and dataset.train:
        return dataset.train[0].path
    rng = np.random.default_rng(0)  # no data given: latency does not depend on pixel values
    return rng.integers(0, 256, (manifest.input.height, manifest.input.width, 3), dtype=np.uint8)


def _write_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(path)


def write_reports(profile: dict, out: Path) -> tuple[Path, Path]:
    """Write profile.json and profile.md into ``out``, each via a temporary file and a rename."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("profile.json", json.dumps(profile, indent=2) + "\n"), ("profile.md", render_markdown(profile))):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, out / name)
        written.append(out / name)
    return written[0], written[1]


def render_markdown(profile: dict) -> str:
    b, d, lat, cold, acc = (profile["bundle"], profile["device"], profile["latency"], profile["cold_start"],
                            profile["accuracy"])
    rows = [
        ("model / backbone", f"{b['model']} / {b['backbone']}"),
        ("target / precision / runtime", f"{b['target']} / {b['precision']} / {b['runtime']} {d['runtime_version']}"),
        ("input", b["input"]),
        ("bundle size", f"{b['size_bytes'] / 1e6:.2f} MB"),
        ("cold start (process → first prediction)", f"{cold['cold_start_s']:.2f} s"),
        ("latency p50 / p90 / p99", f"{lat['p50_ms']:.1f} / {lat['p90_ms']:.1f} / {lat['p99_ms']:.1f} ms"),
        ("  of which pre-process / network / head (p50)",
         " / ".join(f"{lat['stages_p50_ms'][k]:.1f}" for k in ("preprocess", "network", "head")) + " ms"),
        ("throughput (batch 1)", f"{lat['throughput_ips']:.1f} images/s"),
        ("peak RSS", f"{cold['peak_rss_mb']:.0f} MB"),
        ("torch imported on the device path", "yes" if cold["torch_imported"] else "no"),
    ]
    if acc:
        rows += [("image AUROC", f"{acc['image_auroc']:.4f}"),
                 ("pixel AUROC", f"{acc['pixel_auroc']:.4f}" if "pixel_auroc" in acc else "n/a (no masks)"),
                 ("PRO (FPR ≤ 0.3)", f"{acc['pro']:.4f}" if "pro" in acc else "n/a"),
                 ("F1 at the bundle's threshold", f"{acc['f1_at_threshold']:.4f}"),
                 ("test images (anomalous)", f"{acc['test_images']} ({acc['anomalous']})")]
    lines = [f"# edgekit profile: {b['model']} on {b['target']} ({b['precision']})", "",
             "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "## Device", "",
              f"{d['cpu']}, {d['machine']}, {d['usable_cores']} usable of {d['logical_cores']} logical cores, "
              f"{d['memory_gb']} GB; {d['os']}; Python {d['python']}, numpy {d['numpy']}, "
              f"{d['runtime']} {d['runtime_version']}.", "",
              "## Method", "", f"- latency: {lat['method']}", f"- cold start: {cold['method']}"]
    if acc:
        lines.append(f"- accuracy: {acc['method']} ({profile['data']})")
    lines += ["", f"edgekit {profile['edgekit_version']}, {profile['created']}", ""]
    return "\n".join(lines)
