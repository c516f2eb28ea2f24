"""Self-contained HTML trade-off report over ``profile.json`` files, one per device.

One file with no script, no font and no external URL: the chart is inline SVG (edgekit/profile/svg.py) and the
example heat maps are ``data:`` URIs, so the report opens offline and can be attached to a mail or a CI run.
Every string taken from a profile is escaped, because device names, paths and variant names come from users.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from html import escape
from typing import Any, Optional

from edgekit.clock import created_time
from edgekit.errors import EdgekitError
from edgekit.profile.svg import ChartPoint, ChartSeries, scatter_svg

#: Profile schemas this renderer understands.
SCHEMAS = ("edgekit-profile/2",)
#: One colour per device (Okabe-Ito, readable by colour-blind readers), then repeats.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7a5c3e", "#444444")
_IMAGE_MIMES = {"image/jpeg", "image/png", "image/webp", "image/gif"}
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_MISSING = "—"


def pareto_front(points: list[tuple[Optional[float], Optional[float]]]) -> list[bool]:
    """Flag the (latency_ms, auroc) points no other point beats: latency <= and auroc >= with one strict.

    A point with a missing (None or NaN) coordinate is never on the front; identical points are both on it.
    """
    known = [(_num(x), _num(y)) for x, y in points]
    flags = []
    for i, (x, y) in enumerate(known):
        if x is None or y is None:
            flags.append(False)
            continue
        dominated = any(
            j != i and ox is not None and oy is not None and ox <= x and oy >= y and (ox < x or oy > y)
            for j, (ox, oy) in enumerate(known)
        )
        flags.append(not dominated)
    return flags


@dataclass(frozen=True)
class _Variant:
    """One table row / chart point, with the figures the report needs pulled out of the JSON."""

    vid: str
    data: dict
    latency_ms: Optional[float]
    auroc: Optional[float]
    estimate: bool
    pareto: bool


def render_html(
    profiles: list[dict],
    *,
    title: str = "edgekit trade-off report",
    sources: Optional[list[str]] = None,
    names: Optional[list[str]] = None,
) -> str:
    """One complete HTML5 document comparing every variant of every profile; ``sources`` name them in
    errors, ``names`` the sections (default: each profile's device)."""
    _validate(profiles, sources)
    devices = [_prepare(profile, index) for index, profile in enumerate(profiles)]
    series = [
        ChartSeries(names[i] if names else _device_name(p), PALETTE[i % len(PALETTE)], bool(p.get("estimate")))
        for i, p in enumerate(profiles)
    ]
    versions = sorted({str(p.get("edgekit_version", "?")) for p in profiles})
    generated = created_time()
    body = [
        f"<header><h1>{escape(title)}</h1>",
        f'<p class="meta">Generated {escape(generated)} by edgekit {escape(", ".join(versions))} from '
        f"{len(profiles)} profile{'s' if len(profiles) != 1 else ''}.</p>",
        '<p class="howto"><strong>How to read this.</strong> Latency is the median (p50) time to score one '
        "image at batch 1 on the named device, from decoded image to score and heat map; figures marked "
        "“estimate” are roofline lower bounds computed on another host, not measurements. Image AUROC is "
        "measured on the data named in each device section (1.0 = every anomalous image scores above every "
        "normal one). The Pareto front of a device holds the variants no other variant on that device beats "
        "on both latency and AUROC: pick from the front, moving right only when the extra accuracy is worth "
        "the time. Hover a point for its figures; labels (A1, B2, …) match the first column of the tables.</p>"
        "</header>",
        _chart_section(devices, series),
    ]
    body += [
        _device_section(profile, variants, series[i], i) for i, (profile, variants) in enumerate(zip(profiles, devices))
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body><main>"
        + "\n".join(body)
        + "</main></body></html>\n"
    )


def _validate(profiles: Any, sources: Optional[list[str]]) -> None:
    if not isinstance(profiles, list) or not profiles:
        raise EdgekitError("no profiles to report on: give at least one profile.json")
    for index, profile in enumerate(profiles):
        where = sources[index] if sources and index < len(sources) else f"profile #{index + 1}"
        if not isinstance(profile, dict):
            raise EdgekitError(f"{where} is not an edgekit profile (expected a JSON object)")
        schema = profile.get("schema")
        if schema is None:
            raise EdgekitError(f"{where} has no 'schema' field; re-run `edgekit profile` to write {SCHEMAS[-1]}")
        if schema not in SCHEMAS:
            raise EdgekitError(f"{where} has unknown schema {schema!r}; this edgekit reads {', '.join(SCHEMAS)}")
        variants = profile.get("variants")
        if not isinstance(variants, list):
            raise EdgekitError(f"{where} has no 'variants' list")
        for number, variant in enumerate(variants, 1):
            if not isinstance(variant, dict):
                raise EdgekitError(f"{where}: variant {number} is not a JSON object")


def _num(value: Any) -> Optional[float]:
    """A finite number from the JSON, else None (missing, null, text, bool or NaN all count as missing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _letter(index: int) -> str:
    return chr(ord("A") + index) if index < 26 else f"D{index + 1}"


def _prepare(profile: dict, index: int) -> list[_Variant]:
    raw = []
    for variant in profile["variants"]:
        latency, estimate = _num(_get(variant, "latency", "p50_ms")), bool(profile.get("estimate"))
        if latency is None:
            latency = _num(_get(variant, "estimate", "latency_ms"))
            estimate = estimate or latency is not None
        raw.append((variant, latency, _num(_get(variant, "accuracy", "image_auroc")), estimate))
    front = pareto_front([(latency if latency and latency > 0 else None, auroc) for _, latency, auroc, _ in raw])
    return [
        _Variant(f"{_letter(index)}{n}", v, lat, auc, est, on_front)
        for n, ((v, lat, auc, est), on_front) in enumerate(zip(raw, front), 1)
    ]


def _device_name(profile: dict) -> str:
    cpu = _get(profile, "device", "cpu")
    target = profile.get("target") or "?"
    if profile.get("host_is_target") is False:  # an estimate: name the device estimated and the host
        device = _get(profile, "device", "target_cpu") or target
        return f"{target} — {device} (estimated on {cpu or 'another host'})"
    return f"{target} — {cpu}" if cpu else str(profile.get("target") or "unknown device")


def pixel_cell(accuracy: dict, key: str = "pixel_auroc") -> str:
    """A pixel metric as reports show it: "no masks" where the data has none, and how many
    anomalies it covers where only some have masks."""
    if not accuracy:
        return "—"
    if key not in accuracy:
        return "no masks"
    note = accuracy.get("masks", "")
    partial = " (" + note + ")" if note.startswith("masks for") and " of " in note else ""
    return f"{accuracy[key]:.4f}{partial}"


def _fmt(value: Any, pattern: str, scale: float = 1.0) -> str:
    number = _num(value)
    return _MISSING if number is None else format(number * scale, pattern)


def _ms(value: Any) -> str:
    number = _num(value)
    return _MISSING if number is None else f"{number:.1f}" if abs(number) >= 1 or number == 0 else f"{number:.2f}"


def _bytes(value: Any) -> str:
    number = _num(value)
    if number is None:
        return _MISSING
    return f"{number / 1e6:.2f} MB" if number >= 1e6 else f"{number / 1e3:.1f} kB"


def _name(variant: _Variant) -> str:
    return str(variant.data.get("name") or f"variant {variant.vid}")


def _chart_section(devices: list[list[_Variant]], series: list[ChartSeries]) -> str:
    points, missing = [], []
    for device, variants in enumerate(devices):
        for v in variants:
            if v.latency_ms is None or v.latency_ms <= 0 or v.auroc is None:
                missing.append(f"{v.vid} {_name(v)}")
                continue
            kind = "≈ estimate (roofline lower bound)" if v.estimate else "measured"
            tooltip = (
                f"{v.vid} · {_name(v)}\n{series[device].name}\nlatency p50: {_ms(v.latency_ms)} ms ({kind})"
                f"\nimage AUROC: {v.auroc:.4f}" + ("\n★ on the Pareto front" if v.pareto else "")
            )
            precision = str(_get(v.data, "bundle", "precision") or "?")
            points.append(ChartPoint(v.latency_ms, v.auroc, device, v.vid, tooltip, precision, v.estimate, v.pareto))
    note = ""
    if missing:
        note = (
            '<p class="note">Not on the chart (no latency, measured or estimated, or no image AUROC; see the '
            f"tables): {escape('; '.join(missing))}.</p>"
        )
    return (
        f'<section class="chart"><h2>Latency against image AUROC</h2>'
        f'<div class="chart-box">{scatter_svg(points, series)}</div>{note}</section>'
    )


def _device_section(profile: dict, variants: list[_Variant], info: ChartSeries, index: int) -> str:
    device = profile.get("device") if isinstance(profile.get("device"), dict) else {}
    runtimes = sorted(
        {
            f"{_get(v.data, 'bundle', 'runtime')} {_get(v.data, 'bundle', 'runtime_version') or ''}".strip()
            for v in variants
            if _get(v.data, "bundle", "runtime")
        }
    )
    cores = (
        f"{device.get('usable_cores', '?')} of {device.get('logical_cores', '?')} cores usable"
        if device.get("logical_cores") is not None
        else None
    )
    memory = f"{_fmt(device.get('memory_gb'), '.1f')} GB RAM" if _num(device.get("memory_gb")) is not None else None
    hardware = [device.get("cpu"), device.get("machine"), cores, memory, device.get("os")]
    software = [
        f"Python {device['python']}" if device.get("python") else None,
        f"numpy {device['numpy']}" if device.get("numpy") else None,
        *runtimes,
    ]
    if profile.get("host_is_target") is False or profile.get("estimate"):
        where = "profiled on another host: latencies are roofline estimates, not measurements"
    else:
        where = "measured on the target device itself"
    facts = [
        ("Device", " · ".join(str(x) for x in hardware if x) or _MISSING),
        ("Software", " · ".join(str(x) for x in software if x) or _MISSING),
        ("Target", f"{profile.get('target') or _MISSING} — {where}"),
        ("Data", str(profile.get("data") or "none given: accuracy not measured")),
        ("Profiled", f"{profile.get('created') or _MISSING} with edgekit {profile.get('edgekit_version') or '?'}"),
    ]
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts)
    banner = (
        '<p class="banner">Every latency in this profile is a roofline <strong>estimate</strong> (a lower '
        "bound), not a measurement.</p>"
        if profile.get("estimate")
        else ""
    )
    return (
        f'<section class="device" id="device-{index}"><h2><span class="swatch" style="background:{info.colour}">'
        f'</span>{escape(_letter(index))} · {escape(info.name)}</h2>{banner}<table class="facts">{rows}</table>'
        + _variant_table(variants)
        + _methods(variants)
        + _examples(variants)
        + "</section>"
    )


_COLUMNS = (
    "#",
    "Variant",
    "Precision",
    "Bank",
    "Size MB",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "Network ms",
    "Head ms",
    "Cold start s",
    "Peak RSS MB",
    "Image AUROC",
    "Pixel AUROC",
    "PRO",
    "F1",
)


def _variant_table(variants: list[_Variant]) -> str:
    if not variants:
        return '<p class="note">This profile has no variants.</p>'
    head = "".join(f"<th>{escape(c)}</th>" for c in _COLUMNS)
    return (
        f'<div class="table-wrap"><table class="variants"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(map(_row, variants))}</tbody></table></div>"
    )


def _row(v: _Variant) -> str:
    data, bundle, latency = v.data, _get(v.data, "bundle") or {}, _get(v.data, "latency") or {}
    bank = _get(bundle, "bank") or {}
    bank_text = (
        (
            f"{bank.get('rows', '?')}×{bank.get('dims', '?')} {bank.get('dtype', '')}".strip()
            + f", {_bytes(bank.get('bytes'))}"
        )
        if bank
        else _MISSING
    )
    details = " · ".join(
        str(x)
        for x in (
            "/".join(str(bundle[k]) for k in ("model", "backbone") if bundle.get(k)),
            bundle.get("format"),
            f"{bundle['runtime']} {bundle.get('runtime_version') or ''}".strip() if bundle.get("runtime") else None,
            f"input {bundle['input']}" if bundle.get("input") else None,
        )
        if x
    )
    badge = '<span class="badge">★ Pareto</span>' if v.pareto else ""
    name = f'<div class="vname">{escape(_name(v))}{badge}</div><div class="sub">{escape(details)}</div>'
    estimate = _get(data, "estimate") or {}
    if _num(latency.get("p50_ms")) is not None:
        times = [_ms(latency.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms")]
        if v.estimate:
            times = [t if t == _MISSING else _est(t) for t in times]
        stages = [_ms(_get(latency, "stages_p50_ms", k)) for k in ("network", "head")]
    elif v.latency_ms is not None:
        times = [_est(f"{_ms(v.latency_ms)} ms"), _MISSING, _MISSING]
        stages = [_ms(estimate.get(k)) for k in ("network_ms", "head_ms")]
        stages = [s if s == _MISSING else _est(s) for s in stages]
    else:
        times, stages = [_MISSING] * 3, [_MISSING] * 2
    cold, acc = _get(data, "cold_start") or {}, _get(data, "accuracy") or {}
    cells = [
        escape(v.vid),
        name,
        escape(str(bundle.get("precision") or _MISSING)),
        escape(bank_text),
        _fmt(bundle.get("size_bytes"), ".2f", 1e-6),
        *times,
        *stages,
        _fmt(cold.get("cold_start_s"), ".2f"),
        _fmt(cold.get("peak_rss_mb"), ".0f"),
    ] + [
        _fmt(acc.get("image_auroc"), ".4f"),
        escape(pixel_cell(acc)) if acc else _MISSING,
        escape(pixel_cell(acc, "pro")) if acc else _MISSING,
        _fmt(acc.get("f1_at_threshold"), ".4f"),
    ]
    classes = " ".join(c for c in ("pareto" if v.pareto else "", "estimate" if v.estimate else "") if c)
    return (
        f'<tr class="{classes}" data-pareto="{int(v.pareto)}" data-variant="{escape(v.vid)}">'
        + "".join(f"<td>{c}</td>" for c in cells)
        + "</tr>"
    )


def _est(figure: str) -> str:
    """A table cell figure visibly marked as an estimate; the figure itself never wraps."""
    return f'<span class="est"><span class="nowrap">≈{figure}</span> (estimate)</span>'


def _methods(variants: list[_Variant]) -> str:
    seen: dict[tuple[str, str], None] = {}
    for v in variants:
        for label, key in (
            ("Latency", "latency"),
            ("Estimate", "estimate"),
            ("Cold start", "cold_start"),
            ("Accuracy", "accuracy"),
        ):
            method = _get(v.data, key, "method")
            if isinstance(method, str) and method:
                seen[(label, method)] = None
    for label, text in _load_lines(variants):
        seen[(label, text)] = None
    if not seen:
        return ""
    items = "".join(f"<li><strong>{escape(label)}:</strong> {escape(method)}</li>" for label, method in seen)
    return f'<div class="methods"><h3>How these were measured</h3><ul>{items}</ul></div>'


def _load_lines(variants: list[_Variant]) -> list[tuple[str, str]]:
    """What else the machine was doing: one line per measurement (the interleaved latency runs are one)."""
    from edgekit.profile.load import describe_load

    lines: dict[tuple[str, str], None] = {}
    for v in variants:
        if isinstance(_get(v.data, "latency", "load"), dict):
            lines[("Load during latency", describe_load(_get(v.data, "latency", "load")))] = None
    for v in variants:
        if isinstance(_get(v.data, "cold_start", "load"), dict):
            where = f" of {v.vid}" if len(variants) > 1 else ""
            lines[(f"Load during cold start{where}", describe_load(_get(v.data, "cold_start", "load")))] = None
    for v in variants:
        for key in ("latency", "cold_start"):
            method = _get(v.data, key, "load", "method")
            if isinstance(method, str) and method:
                lines[("Load", method)] = None
    return list(lines)


def _examples(variants: list[_Variant]) -> str:
    rows = []
    for v in variants:
        examples = [e for e in (_get(v.data, "examples") or []) if isinstance(e, dict)]
        if examples:
            figures = "".join(_figure(e) for e in examples)
            rows.append(
                f'<div class="ex-row"><div class="ex-head">{escape(v.vid)} · {escape(_name(v))}</div>'
                f'<div class="ex-grid">{figures}</div></div>'
            )
    if not rows:
        return ""
    return (
        '<div class="examples"><h3>Heat maps</h3><p class="note">Anomaly heat map over each example image; '
        "a red frame marks a decision that disagrees with the truth.</p>" + "".join(rows) + "</div>"
    )


def _figure(example: dict) -> str:
    mime, payload = str(example.get("mime") or "image/jpeg"), example.get("overlay_base64")
    if mime in _IMAGE_MIMES and isinstance(payload, str) and _BASE64.fullmatch(payload):
        picture = f'<img src="data:{mime};base64,{payload}" width="128" height="128" alt="heat map">'
    else:
        picture = '<div class="no-image">no image</div>'
    truth, decided = example.get("anomalous_truth"), example.get("decided_anomalous")
    label = str(example.get("label") or ("anomalous" if truth else "good" if truth is False else "?"))
    truth_text = f"truth: {label}" + ("" if truth is None else " (anomalous)" if truth else " (normal)")
    verdict = _MISSING if decided is None else "anomalous" if decided else "normal"
    wrong = truth is not None and decided is not None and bool(truth) != bool(decided)
    mark = (
        '<span class="wrong-mark">✗ disagrees with truth</span>'
        if wrong
        else ('<span class="ok-mark">✓ agrees</span>' if decided is not None and truth is not None else "")
    )
    return (
        f'<figure class="{"wrong" if wrong else "ok"}">{picture}<figcaption>'
        f'<div class="fname">{escape(str(example.get("image") or _MISSING))}</div><div>{escape(truth_text)}</div>'
        f"<div>score {_fmt(example.get('score'), '.3f')} → {escape(verdict)}</div>{mark}</figcaption></figure>"
    )


_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1d2330;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:24px 20px 48px}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:19px;margin:0 0 12px;display:flex;align-items:center;gap:10px}
h3{font-size:15px;margin:18px 0 8px}
header,section{background:#fff;border:1px solid #dde0e6;border-radius:10px;padding:18px 22px;margin-bottom:18px}
.meta{color:#5a6272;margin:0 0 10px}
.howto{margin:0;max-width:1100px}
.note{color:#5a6272;font-size:13px}
.swatch{display:inline-block;width:16px;height:16px;border-radius:4px}
.chart-box svg{width:100%;height:auto;display:block;font-size:12px;fill:#1d2330}
.chart-box .grid{stroke:#e3e5ea;stroke-width:1}
.chart-box .axis-title{font-size:13px;fill:#3b4252}
.chart-box .legend-head{font-weight:600;font-size:13px}
.chart-box .point-label{font-size:11px;fill:#3b4252;font-weight:600}
.banner{background:#fff6e0;border:1px solid #f0d58c;border-radius:6px;padding:8px 12px}
table{border-collapse:collapse}
.facts th{text-align:left;color:#5a6272;font-weight:600;padding:2px 16px 2px 0;vertical-align:top}
.facts td{padding:2px 0}
.table-wrap{overflow-x:auto;margin-top:14px}
.variants{width:100%;font-size:12px}
.variants th{background:#eef0f4;text-align:right;padding:6px 5px;border-bottom:1px solid #cfd3dc;vertical-align:bottom;font-size:11.5px}
.variants td{text-align:right;padding:6px 5px;border-bottom:1px solid #eceef2;vertical-align:top;font-variant-numeric:tabular-nums}
.variants th:nth-child(-n+4),.variants td:nth-child(-n+4){text-align:left}
.variants td:nth-child(2){min-width:200px}
.variants td:nth-child(4){min-width:84px}
.variants tr.pareto td{background:#fff8dc}
.vname{font-weight:600;word-break:break-word}
.sub{color:#6b7283;font-size:11.5px}
.badge{display:inline-block;margin-left:6px;padding:0 6px;border-radius:9px;background:#f2c94c;color:#3d2f00;font-size:11px;white-space:nowrap}
.est{color:#8a5a00;font-style:italic}
.nowrap{white-space:nowrap}
.methods ul{margin:0;padding-left:20px;color:#3b4252;font-size:12.5px}
.ex-row{margin:10px 0 14px}
.ex-head{font-weight:600;margin-bottom:6px}
.ex-grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:140px;padding:5px;border:2px solid #d6dae2;border-radius:8px;background:#fafbfc}
figure.wrong{border-color:#d62828;background:#fff0f0}
figure img,.no-image{display:block;width:128px;height:128px;border-radius:4px;object-fit:cover}
.no-image{background:#e6e8ee;color:#6b7283;text-align:center;line-height:128px}
figcaption{font-size:11.5px;line-height:1.35;margin-top:4px}
.fname{font-weight:600;word-break:break-all}
.wrong-mark{color:#b00020;font-weight:700}
.ok-mark{color:#1b7a3a}
"""
