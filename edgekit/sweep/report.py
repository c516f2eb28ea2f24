"""The merged report of a sweep: every variant of every part as a row, the Pareto front per part and
target, and the pick under each target's budget; written as sweep.json, sweep.md and report.html
(the profile report's page, one section per part and target)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from edgekit.check import counted_flips, limits_held
from edgekit.profile.html import pareto_front

SCHEMA = "edgekit-sweep/1"


def rows_of(results: list[dict]) -> list[dict]:
    """One row per variant (``ok``), refused variant, and failed cell or target, in plan order."""
    rows: list[dict] = []
    for result in results:
        base = {"part": result["part"], "model": result["model"], "family": result.get("family")}
        if result.get("status") != "done":
            rows.append({**base, "status": "failed", "reason": result.get("reason")})
            continue
        for target in result.get("targets", []):
            where = {**base, "target": target["target"]}
            if target.get("reason"):
                rows.append({**where, "status": "failed", "reason": target["reason"]})
            for refused in target.get("refused", []):
                rows.append({**where, "status": "refused", **refused})
            profile = target.get("profile") or {}
            for variant in profile.get("variants", []):
                rows.append({**where, **_variant_row(variant, profile, target.get("checks", {}))})
    return rows


def _variant_row(variant: dict, profile: dict, checks: dict) -> dict:
    bundle, accuracy = variant["bundle"], variant.get("accuracy") or {}
    latency, kind = None, None
    if variant.get("latency"):
        latency, kind = variant["latency"]["p50_ms"], "measured"
    elif variant.get("estimate"):
        latency, kind = variant["estimate"]["latency_ms"], "estimate"
    bank = bundle.get("bank") or {}
    return {
        "status": "ok",
        "format": bundle["format"],
        "precision": bundle["precision"],
        "bank": f"{bank['rows']}x{bank['dims']} {bank['dtype']}" if bank else None,
        "image_auroc": accuracy.get("image_auroc"),
        "pixel_auroc": accuracy.get("pixel_auroc"),
        "size_mb": round(bundle["size_bytes"] / 1e6, 3),
        "latency_ms": latency,
        "latency": kind,
        "measured_on": (profile.get("device") or {}).get("cpu"),
        "check": checks.get(Path(variant["file"]).name),
        "file": variant["file"],
    }


def judge(check: dict, gates) -> dict:
    """A cell's measured check judged with the plan's gates (as ``edgekit check`` would): ``passed``
    and the agreement that was judged, flips within ``gates.borderline`` of the fp32 threshold not
    counted. A record written before flips were kept keeps its agreement."""
    flips = check.get("flips")
    if flips is None or not check.get("images"):
        judged = check["agreement"]
    else:
        judged = 1.0 - counted_flips(flips, gates.borderline) / check["images"]
    held = limits_held(
        check["auroc_drop"], judged, max_auroc_drop=gates.max_auroc_drop, min_agreement=gates.min_agreement
    )
    return {**check, "judged_agreement": round(judged, 6), "passed": all(held)}


def merge(plan, results: list[dict]) -> dict:
    """sweep.json's content: the plan's gates, each cell's summary, the rows (checks judged with the
    gates) with their Pareto flag, and the picks."""
    rows = rows_of(results)
    for row in rows:
        if row.get("check") is not None:
            row["check"] = judge(row["check"], plan.gates)
    for part, target in _groups(rows):
        group = [r for r in rows if r["status"] == "ok" and (r["part"], r["target"]) == (part, target)]
        for row, on_front in zip(group, pareto_front([(r["latency_ms"], r["image_auroc"]) for r in group])):
            row["pareto"] = bool(on_front)
    gates = plan.gates
    return {
        "schema": SCHEMA,
        "plan": str(plan.path),
        "gates": {
            "max_auroc_drop": gates.max_auroc_drop,
            "min_agreement": gates.min_agreement,
            "borderline": gates.borderline,
            "latency_ms": dict(gates.latency_ms),
        },
        "cells": [
            {k: result.get(k) for k in ("cell", "status", "reason", "host", "nice", "seconds", "attempts", "train")}
            for result in results
        ],
        "rows": rows,
        "picks": [pick(rows, part, target, gates) for part, target in _groups(rows)],
    }


def _borderline(gates: dict) -> str:
    """The borderline gate in words for sweep.md ("" when it is 0 or absent)."""
    share = gates.get("borderline") or 0.0
    return f" (flips within {share:.2%} of the fp32 threshold not counted)" if share else ""


def pick(rows: list[dict], part: str, target: str, gates) -> dict:
    """The most accurate variant of ``part`` on ``target`` that passed its check against fp32 and
    fits the target's latency budget; ties go to the smaller bundle (a device's flash and memory;
    unlike a latency it does not change from run to run), then the faster. ``why`` says why none did."""
    budget = gates.latency_ms.get(target)
    candidates = [r for r in rows if r["status"] == "ok" and (r["part"], r["target"]) == (part, target)]
    eligible = [
        r
        for r in candidates
        if r["image_auroc"] is not None
        and (r["check"] is None or r["check"]["passed"])
        and (budget is None or (r["latency_ms"] is not None and r["latency_ms"] <= budget))
    ]
    result: dict[str, Any] = {"part": part, "target": target, "budget_ms": budget}
    if not eligible:
        result["why"] = "no variant was made" if not candidates else "no variant passed its check and fits the budget"
        return result
    best = max(eligible, key=lambda r: (r["image_auroc"], -r["size_mb"], -(r["latency_ms"] or 0.0)))
    latency = "" if best["latency_ms"] is None else f", {best['latency_ms']:.1f} ms {_kind(best)}"
    result.update(
        model=best["model"],
        precision=best["precision"],
        format=best["format"],
        image_auroc=best["image_auroc"],
        latency_ms=best["latency_ms"],
        latency=best["latency"],
        file=best["file"],
        text=f"for part {part} on {target}: {best['model']} {best['precision']} ({best['format']}), "
        f"{best['image_auroc']:.3f} AUROC{latency}",
    )
    return result


def _kind(row: dict) -> str:
    return "estimated" if row["latency"] == "estimate" else "measured"


def _groups(rows: list[dict]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r["part"], r["target"]) for r in rows if r.get("target")))


def render_markdown(sweep: dict) -> str:
    gates = sweep["gates"]
    budgets = ", ".join(f"{t} {ms:g} ms" for t, ms in gates["latency_ms"].items()) or "none"
    lines = [
        "# edgekit sweep",
        "",
        f"Plan `{sweep['plan']}`. Gates: AUROC drop ≤ {gates['max_auroc_drop']:g} and decisions agreeing on "
        f"≥ {gates['min_agreement']:.0%}{_borderline(gates)} against the fp32 variant of the same model and format (`edgekit check`, "
        f"each part's test split); latency budgets: {budgets}.",
        "",
        "## Picks",
        "",
    ]
    lines += [
        f"- {p['text']}" if "text" in p else f"- for part {p['part']} on {p['target']}: {p['why']}"
        for p in sweep["picks"]
    ]
    for part in dict.fromkeys(r["part"] for r in sweep["rows"]):
        lines += [
            "",
            f"## {part}",
            "",
            "| model | target | format | precision | bank | image AUROC | vs fp32 | size MB | p50 ms | Pareto | status |",
            "|---|---|---|---|---|---:|---|---:|---:|---|---|",
        ]
        for r in (r for r in sweep["rows"] if r["part"] == part):
            if r["status"] != "ok":  # the reason up to its first ';' (sweep.json has it whole)
                reason = str(r.get("reason")).split("; ")[0]
                lines.append(
                    f"| {r['model']} | {r.get('target', '')} | {r.get('format', '')} | {r.get('precision', '')} | "
                    f"| | | | | | {r['status']}: {reason} |"
                )
                continue
            check = r["check"]
            versus = (
                "reference"
                if check is None
                else (
                    f"{'pass' if check['passed'] else 'FAIL'}: drop {check['auroc_drop']:+.3f}, "
                    f"agree {check['judged_agreement']:.1%}"
                )
            )
            latency = (
                ""
                if r["latency_ms"] is None
                else f"{r['latency_ms']:.1f}" + (" (est.)" if r["latency"] == "estimate" else "")
            )
            lines.append(
                f"| {r['model']} | {r['target']} | {r['format']} | {r['precision']} | {r['bank'] or ''} | "
                f"{_num(r['image_auroc'], '.3f')} | {versus} | {r['size_mb']:.2f} | {latency} | "
                f"{'yes' if r.get('pareto') else ''} | ok |"
            )
    cells = sweep["cells"]
    lines += ["", "## Cells", ""]
    lines += [
        f"- {c['cell']}: {c['status']}"
        + (f" on {c['host']}" if c.get("host") else "")
        + (f" in {c['seconds']:.0f} s" if c.get("seconds") is not None else "")
        + (f", {c['attempts']} attempts" if (c.get("attempts") or 1) > 1 else "")
        + (f", at nice {c['nice']} (its latencies were measured at low priority)" if c.get("nice") else "")
        + (f" ({c['reason']})" if c.get("reason") else "")
        for c in cells
    ]
    lines += [
        "",
        "Latencies marked (est.) are roofline lower bounds computed on a host that is not the target; the others "
        "were measured on the worker that ran the cell, possibly while other cells ran beside it.",
    ]
    return "\n".join(lines) + "\n"


def _num(value: Optional[float], pattern: str) -> str:
    return "" if value is None else format(value, pattern)


def profiles_of(results: list[dict]) -> tuple[list[dict], list[str]]:
    """The cells' profiles merged per part, target and measuring host (the report page's sections),
    and each section's name."""
    merged: dict[tuple, dict] = {}
    for result in results:
        for target in result.get("targets", []):
            profile = target.get("profile")
            if not profile:
                continue
            key = (result["part"], target["target"], (profile.get("device") or {}).get("cpu"), profile.get("estimate"))
            if key not in merged:
                merged[key] = {**profile, "variants": [], "data": f"part {result['part']}: {profile.get('data')}"}
            for variant in profile["variants"]:
                merged[key]["variants"].append({**variant, "name": f"{result['model']}: {variant['name']}"})
    names = [f"{part} on {target}" + (" (estimate)" if estimate else "") for part, target, _, estimate in merged]
    return list(merged.values()), names


def write_reports(plan, results: list[dict], out: Path) -> dict:
    """sweep.json, sweep.md and (when any variant was profiled) report.html, each written atomically."""
    from edgekit.profile.html import render_html
    from edgekit.staging import write_atomic

    sweep = merge(plan, results)
    write_atomic(out / "sweep.json", (json.dumps(sweep, indent=1) + "\n").encode())
    write_atomic(out / "sweep.md", render_markdown(sweep).encode())
    profiles, names = profiles_of(results)
    if profiles:
        html = render_html(profiles, title=f"edgekit sweep: {Path(plan.path).name}", names=names)
        write_atomic(out / "report.html", html.encode())
    return sweep
