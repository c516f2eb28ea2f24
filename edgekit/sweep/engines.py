"""Where cells run: a local pool of processes (nothing to install), or Ray tasks on a cluster started
with ``ray start`` (one machine or many, the same command).

Both call :func:`edgekit.sweep.cell.run_cell` and hand every result to ``report`` as it arrives. A
cell whose process dies without a result is run again, up to ``retries`` more times; after that
it is a failed result saying so. The local engine runs each cell in a fresh spawned process (a
crash, a leak or a stuck thread pool cannot reach the next cell) and sees a death as the process's
exit; Ray sees it as a lost worker and resubmits the task itself (``max_retries``).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
from collections import Counter
from typing import Any, Callable, Optional, Sequence

from edgekit.errors import EdgekitError
from edgekit.sweep.plan import Cell

Report = Callable[[dict], None]
#: Called with the number of cells running whenever it changes.
Running = Callable[[int], None]


def failed_result(cell: Cell, reason: str) -> dict:
    """A cell that never gave a result of its own."""
    from edgekit.sweep.cell import cell_record

    return cell_record(cell, status="failed", reason=reason)


def _child(connection, cell: Cell, kwargs: dict, log: Optional[str]) -> None:
    """A cell in its own process; what the libraries print goes to its log, not the terminal."""
    import os

    from edgekit.sweep.cell import run_cell

    if log:
        descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(descriptor, 1)
        os.dup2(descriptor, 2)
        os.close(descriptor)
    connection.send(run_cell(cell, **kwargs))
    connection.close()


def run_local(
    cells: Sequence[Cell],
    kwargs: dict,
    *,
    workers: int,
    retries: int,
    report: Report,
    running: Running,
    logs: Optional[str] = None,
) -> None:
    """At most ``workers`` cells at once, each in its own spawned process (its output in
    ``logs/<cell>.log`` when ``logs`` is given)."""
    context = multiprocessing.get_context("spawn")
    queue, attempts = list(cells), Counter[str]()
    active: dict[Any, tuple[Any, Cell]] = {}  # receiving end -> (process, cell)
    try:
        while queue or active:
            while queue and len(active) < workers:
                cell = queue.pop(0)
                attempts[cell.name] += 1
                receiver, sender = context.Pipe(duplex=False)
                log = f"{logs}/{cell.name}.log" if logs else None
                process = context.Process(
                    target=_child, args=(sender, cell, kwargs, log), name=f"edgekit-sweep {cell.name}"
                )
                process.start()
                sender.close()
                active[receiver] = (process, cell)
            running(len(active))
            ready = set(multiprocessing.connection.wait([*active, *(p.sentinel for p, _ in active.values())]))
            for receiver, (process, cell) in list(active.items()):
                if receiver not in ready and process.sentinel not in ready:
                    continue
                result: Optional[dict] = None
                if receiver.poll():
                    try:
                        result = receiver.recv()
                    except (EOFError, OSError):
                        result = None
                process.join()
                receiver.close()
                del active[receiver]
                if result is None:
                    if attempts[cell.name] <= retries:
                        queue.insert(0, cell)
                        continue
                    result = failed_result(
                        cell,
                        f"its worker process died {attempts[cell.name]} times (last exit code {process.exitcode})",
                    )
                result["attempts"] = attempts[cell.name]
                report(result)
        running(0)
    finally:
        for process, _ in active.values():
            process.terminate()
            process.join()


def _ray_cell(cell: Cell, kwargs: dict) -> dict:
    from edgekit.sweep.cell import run_cell

    return run_cell(cell, **kwargs)


def run_ray(
    cells: Sequence[Cell],
    kwargs: dict,
    *,
    address: Optional[str],
    workers: Optional[int],
    retries: int,
    cpus: int,
    report: Report,
    running: Running,
) -> None:
    """Every cell a Ray task needing ``cpus`` CPUs, at most ``workers`` in flight (default: as many
    as the cluster's CPUs hold)."""
    try:
        import ray
    except ImportError:
        raise EdgekitError("--engine ray needs Ray: pip install 'edgekit-anomaly[ray]'") from None
    try:
        ray.init(address=address or "auto", logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgekitError(
            f"cannot reach a Ray cluster at {address or 'auto'}: {first} (start one with `ray start --head`)"
        ) from None
    try:
        remote = ray.remote(_ray_cell).options(num_cpus=cpus, max_retries=retries)
        limit = workers or max(1, int(ray.cluster_resources().get("CPU", cpus) // cpus))
        pending, inflight = list(cells), {}
        while pending or inflight:
            while pending and len(inflight) < limit:
                cell = pending.pop(0)
                inflight[remote.remote(cell, kwargs)] = cell
            running(len(inflight))
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                cell = inflight.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    result = failed_result(
                        cell, f"Ray gave up on it after {retries + 1} attempts ({type(exc).__name__})"
                    )
                report(result)
        running(0)
    finally:
        ray.shutdown()
