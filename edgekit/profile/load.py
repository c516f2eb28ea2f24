"""What else the device was doing while a profile measured it, and busy processes to make it busier.

``snapshot()`` reads the load average, ``/proc/stat`` and every ``/proc/[pid]/stat`` once; ``compare``
turns two snapshots (start and end of a measurement) into the ``load`` block a profile records. Nothing is
sampled during timing. Where ``/proc`` (or the load average) is missing the block says "not available"
instead of guessing. ``busy_processes(n)`` runs n spinning processes around a measurement, to see latency
under contention; processes, not threads, because a spinning Python thread would hold this process's GIL
and slow the measurement for a reason no device has.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from edgekit.errors import EdgekitError

#: A process is listed as busy above this share of one core over the window.
BUSY_PERCENT = 5.0
#: How many busy processes a load block lists at most (the busiest first).
TOP = 5
#: --background accepts 0..MAX_BACKGROUND busy processes.
MAX_BACKGROUND = 64

# Spins until the parent ends it, or until the parent is gone (re-parented: never an orphan spinning forever).
_SPIN = (
    "import os, sys\nparent = os.getppid()\nsys.stdout.write('r')\nsys.stdout.flush()\n"
    "while os.getppid() == parent:\n    for _ in range(200000):\n        pass\n"
)


@dataclass(frozen=True)
class Snapshot:
    """One reading of the machine; a None field was not available here."""

    wall: float  # time.monotonic()
    loadavg: Optional[tuple[float, float, float]]
    cpu: Optional[tuple[int, int, int]]  # busy, steal, total jiffies over all cores
    uptime_ticks: Optional[float]  # /proc/uptime in clock ticks
    processes: Optional[dict[tuple[int, int], tuple[str, int]]]  # (pid, start tick) -> (comm, utime+stime)
    why_not: tuple[str, ...] = ()


def snapshot(proc: Path | str = "/proc") -> Snapshot:
    """Load average, machine CPU counters and every process's CPU time, read once (a few ms)."""
    proc, why_not = Path(proc), []
    try:
        loadavg = tuple(float(x) for x in os.getloadavg()) if str(proc) == "/proc" else _read_loadavg(proc)
    except (OSError, ValueError, AttributeError):
        loadavg = None
        why_not.append("no load average")
    cpu = uptime = processes = None
    try:
        fields = [int(x) for x in (proc / "stat").read_text().splitlines()[0].split()[1:9]]
        user, nice, system, idle, iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
        cpu = (user + nice + system + irq + softirq, steal, sum(fields))
        uptime = float((proc / "uptime").read_text().split()[0]) * _ticks_per_second()
        processes = {}
        for entry in os.scandir(proc):
            if entry.name.isdigit():
                read = _read_process(proc / entry.name / "stat")
                if read is not None:
                    processes[(int(entry.name), read[2])] = read[:2]
    except (OSError, ValueError, IndexError):
        why_not.append(f"no {proc}/stat")
    return Snapshot(time.monotonic(), loadavg, cpu, uptime, processes, tuple(why_not))


def _read_loadavg(proc: Path) -> tuple[float, float, float]:
    one, five, fifteen = (proc / "loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def _ticks_per_second() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return 100


def _read_process(path: Path) -> Optional[tuple[str, int, int]]:
    """(comm, utime+stime, start tick) of one process; None when it ended while we looked."""
    try:
        text = path.read_text()
    except OSError:
        return None
    head, _, rest = text.rpartition(")")  # comm may hold spaces and parentheses
    fields = rest.split()
    try:  # after comm: state(0) ... utime(11) stime(12) ... starttime(19)
        return head.partition("(")[2], int(fields[11]) + int(fields[12]), int(fields[19])
    except (IndexError, ValueError):
        return None


def compare(
    start: Snapshot,
    end: Snapshot,
    *,
    background: Iterable[int] = (),
    busy_percent: float = BUSY_PERCENT,
    top: int = TOP,
) -> dict:
    """The ``load`` block of one measurement window: load average before and after, machine-wide CPU,
    this process's CPU, the other processes above ``busy_percent`` of one core, and the ``background``
    workers (listed apart, never among the others; their CPU is in the load and machine figures)."""
    window = max(end.wall - start.wall, 1e-9)
    block: dict[str, Any] = {
        "window_s": round(window, 3),
        "loadavg_before": [round(x, 2) for x in start.loadavg] if start.loadavg else None,
        "loadavg_after": [round(x, 2) for x in end.loadavg] if end.loadavg else None,
        "cores": os.cpu_count(),
        "cpu_busy_percent": None,
        "cpu_steal_percent": None,
        "this_process_cpu_percent": None,
        "busy_processes": None,
        "busy_threshold_percent": busy_percent,
    }
    if start.cpu and end.cpu and end.cpu[2] > start.cpu[2]:
        total = end.cpu[2] - start.cpu[2]
        block["cpu_busy_percent"] = round(100 * (end.cpu[0] - start.cpu[0]) / total, 1)
        block["cpu_steal_percent"] = round(100 * (end.cpu[1] - start.cpu[1]) / total, 1)
    background = list(background)
    used = _cpu_percents(start, end, window)
    if used is not None:
        me = os.getpid()
        block["this_process_cpu_percent"] = next((p for (pid, _), p in used.items() if pid == me), None)
        others = sorted(
            (
                (p, pid, name)
                for (pid, name), p in used.items()
                if pid != me and pid not in background and p > busy_percent
            ),
            reverse=True,
        )
        block["busy_processes"] = [{"pid": pid, "name": name, "cpu_percent": p} for p, pid, name in others[:top]]
        block["busy_processes_more"] = max(len(others) - top, 0)
    if background:
        by_pid = {pid: p for (pid, _), p in (used or {}).items()}
        block["background"] = {
            "processes": len(background),
            "pids": background,
            "cpu_percent": [by_pid.get(pid) for pid in background],
        }
    missing = sorted(set(start.why_not) | set(end.why_not))
    block["not_available"] = missing or None
    block["method"] = (
        "os.getloadavg() (1-minute load) before and after the measurement (the timed runs, or the cold starts); "
        "/proc/stat and every /proc/[pid]/stat read once at its start and once at its end, nothing in between: "
        "CPU busy share of all cores (user+nice+system+irq+softirq), and the processes other than this one and "
        f"its background workers that used more than {busy_percent:g} % of one core (utime+stime); a process that "
        "ended within the window (such as a cold start's) is in the CPU figures but not listed; load and CPU "
        "figures include this process and its background workers"
    )
    return block


def _cpu_percents(start: Snapshot, end: Snapshot, window: float) -> Optional[dict[tuple[int, str], float]]:
    """(pid, comm) -> % of one core over the window, for every process alive at its end."""
    if start.processes is None or end.processes is None:
        return None
    ticks, started = _ticks_per_second(), start.uptime_ticks or 0.0
    used = {}
    for (pid, begun), (name, after) in end.processes.items():
        before = start.processes.get((pid, begun))
        if before is None and begun < started - ticks:  # existed before the window but was missed: no figure
            continue
        spent = after - (before[1] if before else 0)  # new in the window: all its time is in the window
        used[(pid, name)] = round(100 * spent / ticks / window, 1)
    return used


@contextlib.contextmanager
def watch(*, background: Iterable[int] = ()) -> Iterator[dict]:
    """``with watch() as load:`` fills ``load`` with the block of the window the body ran in."""
    block: dict = {}
    start = snapshot()
    yield block
    block.update(compare(start, snapshot(), background=background))


@contextlib.contextmanager
def busy_processes(count: int, *, ready_timeout_s: float = 30.0) -> Iterator[list[int]]:
    """``count`` processes each spinning one core while the body runs; yields their PIDs.

    They are terminated by PID and waited for when the body ends, however it ends (exception, Ctrl-C, SIGTERM
    raised as an exception); each also stops on its own when this process is gone."""
    if not 0 <= count <= MAX_BACKGROUND:
        raise EdgekitError(f"--background takes 0 to {MAX_BACKGROUND} busy processes, not {count}")
    workers: list[subprocess.Popen] = []
    try:
        for _ in range(count):
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-S", "-c", _SPIN],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
            )
        for worker in workers:  # each says it is spinning before the measurement starts
            readable, _, _ = select.select([worker.stdout], [], [], ready_timeout_s)
            if not readable or worker.stdout.read(1) != b"r":
                raise EdgekitError(
                    f"background process {worker.pid} did not start ({sys.executable} -S -c <busy loop>)"
                )
        yield [worker.pid for worker in workers]
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=5)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            worker.stdout.close()


def describe_load(block: Any) -> str:
    """One readable line for a ``load`` block (from JSON: every field checked, nothing trusted)."""
    if not isinstance(block, dict):
        return "load not recorded"
    before, after = _one_minute(block.get("loadavg_before")), _one_minute(block.get("loadavg_after"))
    parts = [
        f"load {before:.2f} → {after:.2f}" if before is not None and after is not None else "load average not available"
    ]
    busy, steal, me = (
        _number(block.get(k)) for k in ("cpu_busy_percent", "cpu_steal_percent", "this_process_cpu_percent")
    )
    cores = _number(block.get("cores"))
    if busy is not None:
        machine = f"CPU {busy:.0f} % busy" + (f" ({cores:.0f} cores)" if cores else "")
        if steal is not None and steal >= 1:
            machine += f", {steal:.0f} % stolen by the hypervisor"
        if me is not None and me >= 1:  # a cold start waits on its children: nothing to say then
            machine += f"; this process {me:.0f} % of one core"
        parts.append(machine)
    listed = block.get("busy_processes")
    if isinstance(listed, list):
        threshold = _number(block.get("busy_threshold_percent"))
        names = [
            f"{p.get('name')} (pid {p.get('pid')}) {_number(p.get('cpu_percent')) or 0:.0f} %"
            for p in listed
            if isinstance(p, dict)
        ]
        more = _number(block.get("busy_processes_more"))
        if more:
            names.append(f"{more:.0f} more")
        parts.append(
            "busy: "
            + (", ".join(names) if names else f"no other process above {threshold or BUSY_PERCENT:g} % of one core")
        )
    else:
        missing = block.get("not_available") if isinstance(block.get("not_available"), list) else []
        why = [str(x) for x in missing if x != "no load average"]
        parts.append("busy processes not available" + (f" ({', '.join(why)})" if why else ""))
    background = block.get("background")
    if isinstance(background, dict):
        pids = background.get("pids") if isinstance(background.get("pids"), list) else []
        shares = background.get("cpu_percent") if isinstance(background.get("cpu_percent"), list) else []
        each = ", ".join(
            f"pid {pid}" + (f" {_number(share):.0f} %" if _number(share) is not None else "")
            for pid, share in zip(pids, shares + [None] * len(pids))
        )
        count = _number(background.get("processes")) or len(pids)
        parts.append(
            f"background: {count:.0f} busy process{'es' if count != 1 else ''}" + (f" ({each})" if each else "")
        )
    return "; ".join(parts)


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _one_minute(loadavg: Any) -> Optional[float]:
    return _number(loadavg[0]) if isinstance(loadavg, list) and loadavg else None
