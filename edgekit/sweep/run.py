"""``edgekit sweep``: run a plan's cells on an engine, keep each finished cell, and merge the report.

``DIR/cells/<part>--<model>.json`` is written last for each cell, after its bundles
(``DIR/bundles/<part>/<model>/<target>/*.edgekit``), each atomically: a cell with that file and
the plan's key for it is finished and never redone (a failed one only with ``retry_failed``), so
an interrupted sweep resumes where it stopped and a finished one does no work.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

from edgekit.errors import EdgekitError
from edgekit.staging import write_atomic
from edgekit.sweep.plan import Cell, read_plan

ENGINES = ("local", "ray")


def run_sweep(
    plan_path: str | Path,
    out: str | Path,
    *,
    engine: str = "local",
    address: Optional[str] = None,
    workers: Optional[int] = None,
    cpus: int = 1,
    retries: int = 2,
    retry_failed: bool = False,
    say: Callable[[str], None] = lambda line: None,
) -> dict:
    """Run every unfinished cell of the plan, then write DIR/sweep.json, sweep.md and report.html;
    returns the merged sweep (``edgekit.sweep.report.merge``)."""
    from edgekit.runtime.threads import usable_cores
    from edgekit.sweep import engines
    from edgekit.sweep.report import write_reports

    if engine not in ENGINES:
        raise EdgekitError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if address and engine != "ray":
        raise EdgekitError("--address names a Ray cluster: add --engine ray")
    for name, value, low in (("--workers", workers, 1), ("--cpus", cpus, 1), ("--retries", retries, 0)):
        if value is not None and (isinstance(value, bool) or value < low):
            raise EdgekitError(f"{name} must be at least {low}, not {value}")
    plan = read_plan(plan_path)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgekitError(f"{out}: exists and is not a folder")
    for folder in ("cells", "bundles", "running", "logs"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for stale in (out / "running").glob("*.json"):  # from a sweep that was stopped
        stale.unlink(missing_ok=True)
    write_atomic(out / "plan.toml", Path(plan_path).read_bytes())
    todo = [cell for cell in plan.cells if not _finished(out, cell, retry_failed)]
    progress = _Progress(len(plan.cells), len(plan.cells) - len(todo), say)
    if todo:
        say(f"sweep: {len(todo)} of {len(plan.cells)} cells to run on the {engine} engine")
        kwargs = {
            "latency_runs": plan.latency_runs,
            "threads": cpus,
            "running": str(out / "running"),
        }

        def report(result: dict) -> None:
            progress.finished(_store(out, result))

        if engine == "local":
            engines.run_local(
                todo,
                kwargs,
                workers=workers or max(1, usable_cores() // cpus),
                retries=retries,
                report=report,
                running=progress.running,
                logs=str(out / "logs"),
            )
        else:
            engines.run_ray(
                todo,
                kwargs,
                address=address,
                workers=workers,
                retries=retries,
                cpus=cpus,
                report=report,
                running=progress.running,
            )
    else:
        say(f"sweep: all {len(plan.cells)} cells are finished; nothing to run")
    results = [json.loads((out / "cells" / f"{cell.name}.json").read_text()) for cell in plan.cells]
    return write_reports(plan, results, out)


def _finished(out: Path, cell: Cell, retry_failed: bool) -> bool:
    record_path = out / "cells" / f"{cell.name}.json"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return False
    if record.get("key") != cell.key or (record.get("status") != "done" and retry_failed):
        return False
    return all((out / name).is_file() for name in record.get("files", []))


def _store(out: Path, result: dict) -> dict:
    """Write the cell's bundles, then its record (the mark that it is finished)."""
    folder = Path("bundles") / result["part"] / result["model"]
    files = []
    for name, data in sorted(result.pop("bundles", {}).items()):
        write_atomic(out / folder / name, data)
        files.append(str(folder / name))
    for target in result.get("targets", []):
        for variant in (target.get("profile") or {}).get("variants", []):
            variant["file"] = variant["bundle"]["path"] = str(folder / variant["file"])
    result["files"] = files
    write_atomic(out / "cells" / f"{result['cell']}.json", (json.dumps(result, indent=1) + "\n").encode())
    return result


class _Progress:
    """One line per change: cells done / running / failed, and an ETA from this run's cells."""

    def __init__(self, total: int, done: int, say: Callable[[str], None]) -> None:
        self.total, self.done, self.failed, self.active, self.say = total, done, 0, 0, say
        self.started, self.ran = time.perf_counter(), 0

    def running(self, count: int) -> None:
        if count != self.active:
            self.active = count
            self._line()

    def finished(self, record: dict) -> None:
        self.done += 1
        self.active = max(0, self.active - 1)
        self.ran += 1
        if record.get("status") != "done":
            self.failed += 1
            self.say(f"sweep: cell {record['cell']} failed: {record.get('reason')}")
        self._line()

    def _line(self) -> None:
        left = self.total - self.done
        eta = ""
        if self.ran and left:
            per_cell = (time.perf_counter() - self.started) / self.ran
            eta = f", ETA {per_cell * left / 60:.1f} min"
        self.say(f"sweep: {self.done}/{self.total} cells done, {self.active} running, {self.failed} failed{eta}")
