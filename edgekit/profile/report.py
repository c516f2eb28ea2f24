"""``edgekit profile``: measure bundles here and write ``profile.json``, ``profile.md`` and ``report.html``.

One profile is one device: ``variants`` holds a record per bundle measured (one, or every variant
of a sweep). On a host that is not the target's device nothing is timed: with ``estimate`` the
latency is a roofline estimate, labelled as such, and accuracy is scored on this host.
"""

from __future__ import annotations

import base64
import io
import json
import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from edgekit import __version__
from edgekit.clock import created_time
from edgekit.errors import EdgekitError
from edgekit.profile.html import pixel_cell
from edgekit.progress import ProgressFn, noop
from edgekit.staging import write_atomic

if TYPE_CHECKING:
    from edgekit.data.datasets import Dataset

SCHEMA = "edgekit-profile/2"


def profile_bundles(
    bundles: Sequence[str | Path],
    *,
    target: str,
    out: str | Path,
    data: "str | Path | Dataset | None" = None,
    runs: int = 100,
    warmup: int = 10,
    cold_starts: int = 3,
    estimate: bool = False,
    examples: int = 3,
    background: int = 0,
    threads: Optional[int] = None,
    mode: Optional[str] = None,
    progress: ProgressFn = noop,
) -> dict:
    """Measure (or, off the device, estimate) each bundle; returns the profile and writes the reports.

    ``threads`` and ``mode``: the Detector's thread budget (see ``edgekit.load``; None: the target's).
    ``background`` busy processes run during the latency runs (see edgekit/profile/load.py)."""
    from edgekit.profile.html import pareto_front
    from edgekit.profile.measure import describe_device
    from edgekit.targets import get_target

    spec = get_target(target)
    mismatch = check_host(spec, estimate=estimate)
    created = created_time()  # honours SOURCE_DATE_EPOCH; a bad value is refused before measuring
    if not bundles:
        raise EdgekitError("give at least one bundle (or, with --sweep, a training run)")
    dataset = None
    if data is not None:
        from edgekit.data.datasets import Dataset, open_dataset

        dataset = data if isinstance(data, Dataset) else open_dataset(Path(data))
    detectors = [_load_for(Path(b), spec, threads=threads, mode=mode) for b in bundles]
    images: list = [None] * len(detectors)
    latencies: list = [None] * len(detectors)
    if not estimate:
        from edgekit.profile.measure import measure_latencies

        images = [_decoded_sample(dataset, detector.manifest) for detector in detectors]
        latencies = measure_latencies(
            detectors, images, warmup=warmup, runs=runs, background=background, progress=progress
        )
    variants = [
        _profile_one(
            Path(b),
            detector,
            image,
            latency,
            spec,
            dataset,
            cold_starts=cold_starts,
            estimate=estimate,
            examples=examples,
            host=None if not mismatch else platform.machine(),
            progress=progress,
        )
        for b, detector, image, latency in zip(bundles, detectors, images, latencies)
    ]
    if len({v["bundle"]["source_run"] for v in variants}) > 1:
        for v in variants:
            v["name"] = f"{Path(v['bundle']['source_run']).name}: {v['name']}"
    front = pareto_front([(_latency_of(v), (v["accuracy"] or {}).get("image_auroc")) for v in variants])
    for variant, on_front in zip(variants, front):
        variant["pareto"] = bool(on_front)
    runtimes = sorted({f"{v['bundle']['runtime']} {v['bundle']['runtime_version']}" for v in variants})
    profile = {
        "schema": SCHEMA,
        "edgekit_version": __version__,
        "created": created,
        "target": spec.name,
        "host_is_target": not mismatch,
        "estimate": bool(estimate),
        "host_note": mismatch,
        "device": {**describe_device(", ".join(runtimes), ""), "target_cpu": spec.cpu},
        "data": _data_name(data, dataset),
        "variants": variants,
    }
    write_reports(profile, Path(out))
    return profile


def check_host(spec, *, estimate: bool) -> Optional[str]:
    """Why this host is not ``spec``'s device (None: it is); one clear error when that and
    ``estimate`` disagree: measuring needs the device, estimating needs another host."""
    from edgekit.targets import host_mismatch

    mismatch = host_mismatch(spec)
    if mismatch and not estimate:
        raise EdgekitError(
            f"{mismatch}: run `edgekit profile` on the device itself, or pass --estimate for a "
            f"labelled roofline estimate"
        )
    if not mismatch and estimate:
        raise EdgekitError(f"this machine can run target {spec.name!r}: measure it (drop --estimate)")
    return mismatch


def _latency_of(variant: dict) -> Optional[float]:
    if variant.get("latency"):
        return variant["latency"]["p50_ms"]
    if variant.get("estimate"):
        return variant["estimate"]["latency_ms"]
    return None


def _load_for(path: Path, spec, *, threads: Optional[int] = None, mode: Optional[str] = None):
    from edgekit.runtime.detector import load

    detector = load(path, threads=threads, mode=mode)
    if detector.manifest.target != spec.name:
        raise EdgekitError(f"bundle {path} was exported for {detector.manifest.target!r}, not {spec.name!r}")
    return detector


def _profile_one(
    path: Path,
    detector,
    image: Optional[np.ndarray],
    latency: Optional[dict],
    spec,
    dataset,
    *,
    cold_starts: int,
    estimate: bool,
    examples: int,
    host: Optional[str],
    progress: ProgressFn,
) -> dict:
    """One variant's record; ``image`` (the decoded sample the latency was timed on) also feeds the
    cold start. Off the device (``estimate``) nothing is timed."""
    from edgekit.profile.estimate import roofline_estimate
    from edgekit.profile.measure import measure_cold_start

    manifest = detector.manifest
    bank = dict(manifest.head.params.get("bank") or {})
    bank_text = f", bank {bank['rows']}x{bank['dims']} {bank['dtype']}" if bank else ""
    name = f"{manifest.model} {manifest.network.format} {manifest.precision}{bank_text}"
    cold = estimated = None
    if estimate:
        estimated = roofline_estimate(detector, spec)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            sample_png = Path(tmp) / "sample.png"
            _write_png(image, sample_png)
            progress(f"{name}: cold start", 0, cold_starts)
            cold = measure_cold_start(
                path,
                sample_png,
                repeats=cold_starts,
                load_options={"threads": detector.budget.threads, "mode": detector.budget.mode},
            )
            progress(f"{name}: cold start", cold_starts, cold_starts)
    accuracy = None
    if dataset is not None:
        from edgekit.profile.measure import measure_accuracy

        accuracy = measure_accuracy(
            detector, dataset, progress=lambda stage, done, total: progress(f"{name}: {stage}", done, total)
        )
        if accuracy is not None and host:
            accuracy["method"] += (
                f"; scored on this {host} host with the bundle's own runtime, not on "
                f"{spec.name} (the emulated-ARM parity tests hold scores equal to 5e-3)"
            )
    return {
        "name": name,
        "bundle": {
            "path": str(path.resolve()),
            "model": manifest.model,
            "backbone": manifest.backbone,
            "target": manifest.target,
            "format": manifest.network.format,
            "precision": manifest.precision,
            "runtime": manifest.runtime,
            "runtime_version": detector.backend.version,
            "size_bytes": detector.bundle.size_bytes(),
            "input": _input_text(manifest.input),
            "bank": ({k: bank[k] for k in ("rows", "dims", "dtype", "bytes") if k in bank} or None),
            "source_run": str(manifest.source.get("run", "")),
        },
        "latency": latency,
        "estimate": estimated,
        "cold_start": cold,
        "accuracy": accuracy,
        "examples": _examples(detector, dataset, examples) if dataset is not None else [],
    }


def _data_name(data, dataset) -> Optional[str]:
    """Where the profile's data came from: the path given, or the opened dataset's root."""
    if dataset is None:
        return None
    if isinstance(data, (str, Path)):
        return str(Path(data).resolve())
    return f"{dataset.root.resolve()} ({dataset.layout}, {dataset.masks_note})"


def _decoded_sample(dataset, manifest) -> np.ndarray:
    """The image latency is timed on, decoded and resized to the bundle's input (uint8 HxWxC)."""
    from edgekit.preprocess import fit_to, read_image

    spec = manifest.input
    return fit_to(read_image(_sample_image(dataset, manifest), spec.channels), spec)


def _sample_image(dataset, manifest) -> Path | np.ndarray:
    if dataset is not None and dataset.test:
        return dataset.test[0].path
    if dataset is not None and dataset.train:
        return dataset.train[0].path
    rng = np.random.default_rng(0)  # no data given: latency does not depend on pixel values
    return rng.integers(0, 256, (*manifest.input.map_size, 3), dtype=np.uint8)


def _input_text(spec) -> str:
    """``256x256x3``, and a tiled input's grid: ``256x256x3, 4x4 tiles of 928x928``."""
    text = f"{spec.width}x{spec.height}x{spec.channels}"
    if spec.tiles:
        text += f", {spec.tiles[0]}x{spec.tiles[1]} tiles of {spec.map_size[1]}x{spec.map_size[0]}"
    return text


def pick_examples(samples: Sequence, count: int) -> list:
    """One normal image, then the first image of each defect kind (sorted), up to ``count``."""
    normals = [s for s in samples if s.label == 0]
    by_kind: dict[str, object] = {}
    for sample in samples:
        if sample.label == 1:
            by_kind.setdefault(sample.defect, sample)
    picked = normals[:1] + [by_kind[k] for k in sorted(by_kind)]
    return picked[:count]


def _examples(detector, dataset, count: int) -> list[dict]:
    from PIL import Image

    from edgekit.preprocess import fit_to, read_image
    from edgekit.runtime.overlay import blend

    spec = detector.manifest.input
    result = []
    for sample in pick_examples(list(dataset.test), count):
        pixels = fit_to(read_image(sample.path, spec.channels), spec)
        prediction = detector.predict(pixels)
        thumbnail = Image.fromarray(blend(pixels, prediction.anomaly_map)).resize((128, 128), Image.BILINEAR)
        buffer = io.BytesIO()
        thumbnail.save(buffer, format="JPEG", quality=85)
        result.append(
            {
                "image": f"{Path(sample.path).parent.name}/{Path(sample.path).name}",
                "label": sample.defect,
                "anomalous_truth": bool(sample.label),
                "score": round(float(prediction.score), 4),
                "decided_anomalous": bool(prediction.is_anomalous),
                "mime": "image/jpeg",
                "overlay_base64": base64.b64encode(buffer.getvalue()).decode("ascii"),
            }
        )
    return result


def _write_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(path)


def load_profile(path: Path) -> dict:
    """A profile.json written by `edgekit profile` (this schema), or one clear error."""
    try:
        profile = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EdgekitError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgekitError(f"{path} is not a profile.json ({exc})") from None
    if not isinstance(profile, dict) or profile.get("schema") != SCHEMA:
        found = profile.get("schema") if isinstance(profile, dict) else type(profile).__name__
        raise EdgekitError(
            f"{path} is not an edgekit profile of schema {SCHEMA} (found {found!r}); "
            f"profile the bundle again with this edgekit"
        )
    return profile


def write_report_html(profiles: list[dict], out: Path, *, sources: Optional[list[str]] = None) -> Path:
    from edgekit.profile.html import render_html

    text = render_html(profiles, sources=sources)
    write_atomic(out, text)
    return out


def write_reports(profile: dict, out: Path) -> tuple[Path, Path, Path]:
    """profile.json, profile.md and report.html in ``out``, each via a temporary file and a rename."""
    from edgekit.profile.html import render_html

    out.mkdir(parents=True, exist_ok=True)
    texts = {
        "profile.json": json.dumps(profile, indent=2) + "\n",
        "profile.md": render_markdown(profile),
        "report.html": render_html([profile]),
    }
    for name, text in texts.items():
        write_atomic(out / name, text)
    return out / "profile.json", out / "profile.md", out / "report.html"


def _fmt(value, pattern: str, unit: str = "") -> str:
    return "—" if value is None else f"{value:{pattern}}{unit}"


def render_markdown(profile: dict) -> str:
    d = profile["device"]
    kind = "estimated (roofline lower bound, not measured)" if profile["estimate"] else "measured"
    lines = [f"# edgekit profile: target {profile['target']}, {len(profile['variants'])} variant(s), {kind}", ""]
    if profile.get("host_note"):
        lines += [f"Not measured on the device: {profile['host_note']}. Latencies below are estimates.", ""]
    if len(profile["variants"]) == 1:
        lines += _single_variant_rows(profile["variants"][0])
    else:
        lines += [
            "| variant | size MB | p50 / p90 / p99 ms | network / head ms | cold start s | peak RSS MB | "
            "image AUROC | pixel AUROC | F1 at threshold | Pareto |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for v in profile["variants"]:
            lat, est, cold, acc = v["latency"], v["estimate"], v["cold_start"], v["accuracy"] or {}
            if lat:
                timing = f"{lat['p50_ms']:.1f} / {lat['p90_ms']:.1f} / {lat['p99_ms']:.1f}"
                split = f"{lat['stages_p50_ms']['network']:.1f} / {lat['stages_p50_ms']['head']:.1f}"
            elif est:
                timing = f"≈{est['latency_ms']:.1f} (estimate)"
                split = f"≈{est['network_ms']:.1f} / ≈{est['head_ms']:.1f} (estimate)"
            else:
                timing = split = "—"
            lines.append(
                f"| {v['name']} | {v['bundle']['size_bytes'] / 1e6:.2f} | {timing} | {split} | "
                f"{_fmt(cold and cold['cold_start_s'], '.2f')} | {_fmt(cold and cold['peak_rss_mb'], '.0f')} | "
                f"{_fmt(acc.get('image_auroc'), '.4f')} | {pixel_cell(acc)} | "
                f"{_fmt(acc.get('f1_at_threshold'), '.4f')} | {'yes' if v['pareto'] else ''} |"
            )
        lines += ["", "Pareto: no other variant here is both faster and more accurate (image AUROC)."]
    lines += [
        "",
        "## Device",
        "",
        f"{d['cpu']}, {d['machine']}, {d['usable_cores']} usable of {d['logical_cores']} logical cores, "
        f"{d['memory_gb']} GB; {d['os']}; Python {d['python']}, numpy {d['numpy']}, {d['runtime']}.",
        "",
        "## Method",
        "",
    ]
    methods = []
    for v in profile["variants"]:
        for key, label in (
            ("latency", "latency"),
            ("estimate", "latency"),
            ("cold_start", "cold start"),
            ("accuracy", "accuracy"),
        ):
            if v.get(key) and f"- {label}: {v[key]['method']}" not in methods:
                methods.append(f"- {label}: {v[key]['method']}")
    lines += methods
    lines += _load_lines(profile["variants"])
    if profile["data"]:
        lines.append(f"- data: {profile['data']}")
    lines += ["", f"edgekit {profile['edgekit_version']}, {profile['created']}", ""]
    return "\n".join(lines)


def _load_lines(variants: list[dict]) -> list[str]:
    """One line per measurement saying what else the machine was doing (the interleaved latency runs are one)."""
    from edgekit.profile.load import describe_load

    lines: list[str] = []
    for v in variants:
        latency = (
            f"- load during latency: {describe_load(v['latency']['load'])}"
            if (v.get("latency") or {}).get("load")
            else None
        )
        if latency and latency not in lines:
            lines.append(latency)
    for v in variants:
        if (v.get("cold_start") or {}).get("load"):
            where = f" of {v['name']}" if len(variants) > 1 else ""
            lines.append(f"- load during cold start{where}: {describe_load(v['cold_start']['load'])}")
    methods = {
        (v.get(key) or {}).get("load", {}).get("method")
        for v in variants
        for key in ("latency", "cold_start")
        if (v.get(key) or {}).get("load")
    }
    return lines + [f"- load: {method}" for method in sorted(m for m in methods if m)]


def _single_variant_rows(v: dict) -> list[str]:
    """One bundle: a measure / value table, every figure on its own row."""
    b, lat, est, cold, acc = v["bundle"], v["latency"], v["estimate"], v["cold_start"], v["accuracy"]
    rows = [
        ("model / backbone", f"{b['model']} / {b['backbone']}"),
        ("target / precision / runtime", f"{b['target']} / {b['precision']} / {b['runtime']} {b['runtime_version']}"),
        ("input", b["input"]),
        ("bundle size", f"{b['size_bytes'] / 1e6:.2f} MB"),
    ]
    if b.get("bank"):
        bank = b["bank"]
        rows.append(("memory bank", f"{bank['rows']} x {bank['dims']} {bank['dtype']} ({bank['bytes'] / 1e3:.1f} kB)"))
    if lat:
        rows += [
            ("latency p50 / p90 / p99", f"{lat['p50_ms']:.1f} / {lat['p90_ms']:.1f} / {lat['p99_ms']:.1f} ms"),
            (
                "  of which pre-process / network / head (p50)",
                " / ".join(f"{lat['stages_p50_ms'][k]:.1f}" for k in ("preprocess", "network", "head")) + " ms",
            ),
            ("throughput (batch 1)", f"{lat['throughput_ips']:.1f} images/s"),
        ]
    if est:
        rows += [
            ("latency (estimate, roofline lower bound)", f"≈{est['latency_ms']:.1f} ms (estimate)"),
            ("  network / head (estimate)", f"≈{est['network_ms']:.1f} / ≈{est['head_ms']:.1f} ms (estimate)"),
        ]
    if cold:
        rows += [
            ("cold start (process → first prediction)", f"{cold['cold_start_s']:.2f} s"),
            ("peak RSS", f"{cold['peak_rss_mb']:.0f} MB"),
            ("torch imported on the device path", "yes" if cold["torch_imported"] else "no"),
        ]
    if acc:
        rows += [
            ("image AUROC", f"{acc['image_auroc']:.4f}"),
            ("pixel AUROC", pixel_cell(acc)),
            ("PRO (FPR ≤ 0.3)", pixel_cell(acc, "pro")),
            ("F1 at the bundle's threshold", f"{acc['f1_at_threshold']:.4f}"),
            ("test images (anomalous)", f"{acc['test_images']} ({acc['anomalous']})"),
        ]
    return ["| measure | value |", "|---|---|"] + [f"| {k} | {value} |" for k, value in rows]
