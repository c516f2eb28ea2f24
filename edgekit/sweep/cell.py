"""One sweep cell, on whichever worker runs it: train once, export every variant per target as a
single ``.edgekit`` file, check each quantized variant against its fp32 reference on the part's
test split, and profile them (measured where this worker is the target, a labelled roofline
estimate elsewhere).

The result is plain data and the bundles' bytes: the driver writes them, so workers need no shared
file system (only the part's data, at the path the plan names). A failure is the cell's row with
its one-line reason, never an exception out of the worker.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from edgekit.errors import EdgekitError
from edgekit.sweep.plan import Cell


def run_cell(cell: Cell, *, latency_runs: int, threads: int, running: Optional[str] = None) -> dict:
    """The cell's result: ``status`` "done" or "failed" (with ``reason``), per target its profile,
    refused variants and checks, and ``bundles`` (relative name -> .edgekit bytes).

    ``running``: a folder where, when this worker can see it, ``<cell>.json`` says which process
    runs the cell while it runs (the driver's progress; on another machine it is skipped)."""
    started = time.perf_counter()
    marker = _announce(running, cell)
    result = cell_record(cell)
    result.update(
        host=platform.node(),
        machine=platform.machine(),
        pid=os.getpid(),
        nice=os.nice(0),  # Ray starts its workers at nice 15: their latencies are low-priority ones
    )
    scratch = Path(tempfile.mkdtemp(prefix="edgekit-sweep-"))
    try:
        _limit_threads(threads)
        result.update(_run(cell, scratch, latency_runs=latency_runs, threads=threads))
        result["status"] = "done"
    except EdgekitError as exc:
        result.update(status="failed", reason=str(exc))
    except Exception as exc:  # a cell's bug or a library's error is its row, not the sweep's end
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result.update(status="failed", reason=f"{type(exc).__name__}: {first}"[:500])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if marker is not None:
            marker.unlink(missing_ok=True)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def cell_record(cell: Cell, **fields: Any) -> dict[str, Any]:
    """The fields every cell result has, whoever made it (the cell, or an engine whose worker died)."""
    record = {"cell": cell.name, "key": cell.key, "part": cell.part, "model": cell.label, "family": cell.model}
    return {**record, "targets": [], "bundles": {}, **fields}


def _run(cell: Cell, scratch: Path, *, latency_runs: int, threads: int) -> dict:
    from edgekit.data.datasets import open_dataset
    from edgekit.train.engine import train

    dataset = open_dataset(Path(cell.data), category=cell.category, seed=cell.seed)
    run = train(cell.model, dataset, scratch / "run", seed=cell.seed, **cell.options)
    metrics = json.loads((run.path / "metrics.json").read_text())
    targets, bundles = [], {}
    for target in cell.targets:
        record, files = _target(run.path, target, scratch, dataset, cell, latency_runs, threads)
        targets.append(record)
        bundles.update(files)
    return {
        "train": {
            "seconds": run.config.get("train_seconds"),
            **{k: metrics[k] for k in ("image_auroc", "pixel_auroc") if k in metrics},
        },
        "targets": targets,
        "bundles": bundles,
    }


def _target(
    run_dir: Path, target: str, scratch: Path, dataset, cell: Cell, latency_runs: int, threads: int
) -> tuple[dict, dict[str, bytes]]:
    """Export, check and profile the cell's variants for one target; a target that cannot be done
    (no variant offered, no estimate possible) is a record with its reason."""
    from edgekit.check import check_bundles
    from edgekit.profile.report import profile_bundles
    from edgekit.targets import get_target, host_mismatch
    from edgekit.variants import export_variants, plan_variants

    spec = get_target(target)
    record: dict[str, Any] = {"target": target, "profile": None, "refused": [], "checks": {}}
    formats = [f for f in (cell.formats or (spec.default_format,)) if f in spec.formats]
    precisions = cell.precisions
    if not formats or (precisions and not any(p in spec.formats[f].precisions for f in formats for p in precisions)):
        record["reason"] = f"target {target} offers none of the plan's formats and precisions"
        return record, {}
    try:
        variants = plan_variants(spec, model=cell.model, formats=formats, precisions=precisions, banks=cell.banks)
        paths, refused = export_variants(run_dir, target, scratch / "bundles" / target, variants, archive=True)
        record["refused"] = [
            {"format": v.format, "precision": v.precision, "bank": v.bank, "reason": why} for v, why in refused
        ]
        refused_variants = {variant for variant, _ in refused}
        exported = [variant for variant in variants if variant not in refused_variants]
        by_slug = {variant.slug: path for variant, path in zip(exported, paths)}
        for variant in variants:
            if variant.slug not in by_slug or variant.precision == "fp32":
                continue
            reference = by_slug.get(replace(variant, precision="fp32").slug)
            if reference is None:
                continue
            checked = check_bundles(reference, by_slug[variant.slug], dataset)
            record["checks"][by_slug[variant.slug].name] = {  # measured; the report judges with the gates
                "reference": reference.name,
                "auroc_drop": round(checked.auroc_drop, 6),
                "agreement": round(checked.agreement, 6),
                "images": checked.images,
                "flips": [round(margin, 6) for _, _, margin, _ in checked.differing()],
            }
        if paths:
            record["profile"] = profile_bundles(
                paths,
                target=target,
                out=scratch / "profile" / target,
                data=dataset,
                runs=latency_runs,
                warmup=3,
                cold_starts=1,
                estimate=host_mismatch(spec) is not None,
                examples=0,
                threads=threads,
            )
    except EdgekitError as exc:
        record["reason"] = str(exc)
        return record, {}
    files = {f"{target}/{path.name}": path.read_bytes() for path in paths}
    for variant in (record["profile"] or {}).get("variants", []):
        variant["file"] = f"{target}/{Path(variant['bundle']['path']).name}"
        variant["bundle"]["path"] = variant["file"]
    return record, files


def _announce(running: Optional[str], cell: Cell) -> Optional[Path]:
    if not running or not Path(running).is_dir():
        return None
    marker = Path(running) / f"{cell.name}.json"
    marker.write_text(json.dumps({"pid": os.getpid(), "host": platform.node(), "started": time.time()}))
    return marker


def _limit_threads(threads: int) -> None:
    """Training and export in this process use the cell's CPUs, not the machine's."""
    try:
        import torch

        torch.set_num_threads(max(1, threads))
    except ImportError:  # pragma: no cover - the sweep needs the training extra; train() says so
        pass
