"""One sweep plan three ways on this machine: 1 local worker, 2 local workers, a 2-worker Ray cluster.

    python3 benchmarks/sweep_scaling.py [--workdir DIR]

The plan: brick and grass (the embedded data at 128², 20 train normals), DFM and PaDiM (128²),
fp32 and int8 for x86 (8 variants in 4 cells), 10 latency rounds per variant. Each engine runs it
into a fresh folder; the Ray cluster is a head and a worker node, one CPU each, started here as
two ``ray start --block`` processes and stopped by PID. Printed: wall time per engine and its ratio
to one local worker, each cell's own seconds, Ray's overhead (its wall time against the local
engine's with the same 2 workers, per cell, and the round trip of an empty task), and a paper
estimate, from the measured per-cell costs, of a 50-part x 4-model x 3-target plan on 10 nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAN = """
[sweep]
targets = ["x86"]
precisions = ["fp32", "int8"]
latency_runs = 10

[[parts]]
name = "brick"
data = "data/brick"

[[parts]]
name = "grass"
data = "data/grass"

[[models]]
model = "dfm"
options = { image_size = 128, holdout = 0.4 }

[[models]]
model = "padim"
options = { image_size = 128, holdout = 0.4 }
"""


def _sweep(plan: Path, out: Path, *flags: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "edgekit", "sweep", str(plan), "--out", str(out), *flags],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def _cells(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def _ray_cluster(temp: Path) -> tuple[str, list[subprocess.Popen]]:
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]  # Ray's CLI, wherever pip put its script
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    address = f"127.0.0.1:{port}"
    head = subprocess.Popen(
        [*ray_cli, "start", "--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", str(temp),
         "--num-cpus", "1", "--block"], **quiet,
    )  # fmt: skip
    time.sleep(10)
    worker = subprocess.Popen([*ray_cli, "start", "--address", address, "--num-cpus", "1", "--block"], **quiet)
    time.sleep(10)
    return address, [worker, head]


def _empty_task_ms(address: str) -> float:
    probe = (
        "import ray, time; ray.init(address=%r, logging_level='ERROR');"
        "f = ray.remote(lambda: 0); ray.get(f.remote());"
        "t = time.perf_counter(); [ray.get(f.remote()) for _ in range(50)];"
        "print((time.perf_counter() - t) / 50 * 1e3)" % address
    )
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return float(found.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from edgekit.data.synth import synthesize

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgekit-sweep-scaling-"))
    for texture in ("brick", "grass"):
        if not (workdir / "data" / texture).is_dir():
            synthesize(workdir / "data", texture=texture, size=128, n_train=20, n_test_good=6, n_per_defect=3)
    plan = workdir / "plan.toml"
    plan.write_text(PLAN)
    load = [os.getloadavg()[0]]
    walls = {"local, 1 worker": _sweep(plan, workdir / "local1", "--workers", "1")}
    load.append(os.getloadavg()[0])
    walls["local, 2 workers"] = _sweep(plan, workdir / "local2", "--workers", "2")
    load.append(os.getloadavg()[0])
    address, processes = _ray_cluster(Path(f"/tmp/ray-scaling-{os.getpid()}"))
    try:
        walls["Ray, 2 workers"] = _sweep(plan, workdir / "ray2", "--engine", "ray", "--address", address)
        empty_ms = _empty_task_ms(address)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    load.append(os.getloadavg()[0])
    cells = _cells(workdir / "local1")
    seconds = [c["seconds"] for c in cells]
    train = [c["train"]["seconds"] for c in cells]
    print("| engine | wall s | vs 1 local worker |\n|---|---:|---:|")
    for name, wall in walls.items():
        print(f"| {name} | {wall:.1f} | {walls['local, 1 worker'] / wall:.2f}x |")
    print()
    for cell in cells:
        print(f"- {cell['cell']}: {cell['seconds']:.1f} s (training {cell['train']['seconds']:.1f} s)")
    overhead = (walls["Ray, 2 workers"] - walls["local, 2 workers"]) / len(cells)
    print(
        f"\nRay against the local engine, both 2 workers: {overhead:+.1f} s per cell; an empty Ray task's round "
        f"trip: {empty_ms:.2f} ms. Load (1 min) before each engine and after: {' -> '.join(f'{x:.2f}' for x in load)}."
    )
    per_cell = statistics.mean(seconds)
    per_target = statistics.mean(s - t for s, t in zip(seconds, train))  # export, check and profile of 1 target
    big_cell = statistics.mean(train) + 3 * per_target
    cells_big, nodes, per_node = 50 * 4, 10, 2
    hours = cells_big * big_cell / (nodes * per_node) / 3600
    print(
        f"\nPaper estimate, 50 parts x 4 models x 3 targets = {cells_big} cells on {nodes} nodes like this one "
        f"({per_node} one-CPU cells each): a cell here took {per_cell:.0f} s for 1 target (training "
        f"{statistics.mean(train):.0f} s, the target's exports, checks and profile {per_target:.0f} s), so about "
        f"{big_cell:.0f} s with 3 targets and {hours:.1f} h in all at these models' cost on 128² images. Heavier "
        f"models multiply it: EfficientAD trains for minutes per part."
    )
    print(f"\nfolders in {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
