"""``edgekit sweep``: a 2 parts x 2 models x 2 precisions plan on the local engine and on a real Ray
cluster the test starts (a head and a worker, each its own ``ray start --block`` process, stopped
by PID at the end). Both give the same accuracy figures and picks; a worker process killed in the
middle of a cell has that cell run again; a sweep run again after it finished does no work."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

PLAN = """
[sweep]
targets = ["x86"]
precisions = ["fp32", "int8"]
latency_runs = 3

[gates]
max_auroc_drop = 0.05
latency_ms = {{ x86 = 500 }}

[[parts]]
name = "brick"
data = "{data}/brick"

[[parts]]
name = "grass"
data = "{data}/grass"

[[models]]
model = "dfm"
options = {{ image_size = 128, holdout = 0.4 }}

[[models]]
model = "padim"
options = {{ image_size = 128, holdout = 0.4 }}
"""


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> Path:
    from edgekit.data.synth import synthesize

    root = tmp_path_factory.mktemp("sweep-plan")
    synthesize(root / "data", texture="brick", size=128, n_train=20, n_test_good=6, n_per_defect=3)
    synthesize(root / "data", texture="grass", size=128, n_train=20, n_test_good=6, n_per_defect=3)
    (root / "plan.toml").write_text(PLAN.format(data="data"))
    return root / "plan.toml"


def _sweep_killing_one_cell(plan: Path, out: Path, *flags: str) -> tuple[str, int, str]:
    """Run the sweep; SIGKILL the process of the first cell that starts; return (cell, pid, output)."""
    command = [sys.executable, "-m", "edgekit", "sweep", str(plan), "--out", str(out), *flags]
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    try:
        deadline = time.monotonic() + 300
        while killed is None and time.monotonic() < deadline and sweep.poll() is None:
            for marker in sorted((out / "running").glob("*.json")):
                try:
                    pid = json.loads(marker.read_text())["pid"]
                except (OSError, ValueError, KeyError):
                    continue  # being written
                os.kill(pid, signal.SIGKILL)
                killed = (marker.stem, pid)
                break
            time.sleep(0.2)
        output, _ = sweep.communicate(timeout=900)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert killed is not None and sweep.returncode == 0, output
    return killed[0], killed[1], output


@pytest.fixture(scope="module")
def local(plan, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep-local") / "out"
    return (out, *_sweep_killing_one_cell(plan, out, "--workers", "2"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A head and one worker node, one CPU each, as two `ray start --block` processes."""
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]  # Ray's CLI, wherever pip put its script
    port = _free_port()
    temp = Path(f"/tmp/ray-edgekit-{os.getpid()}")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus", "1", "--block"]
    head = subprocess.Popen(
        [*ray_cli, "start", "--head", "--port", str(port), "--include-dashboard", "false",
         "--temp-dir", str(temp), *common],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    processes = [head]
    try:
        address = f"127.0.0.1:{port}"
        _wait_for_cpus(address, 1, head)
        processes.append(
            subprocess.Popen(
                [*ray_cli, "start", "--address", address, *common],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        )
        _wait_for_cpus(address, 2, head)
        yield address
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_for_cpus(address: str, cpus: int, head: subprocess.Popen) -> None:
    probe = f"import ray; ray.init(address={address!r}, logging_level='ERROR'); print(ray.cluster_resources().get('CPU', 0))"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert head.poll() is None, "the Ray head exited"
        found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        if found.returncode == 0 and float(found.stdout.strip().splitlines()[-1]) >= cpus:
            return
        time.sleep(1)
    raise AssertionError(f"the Ray cluster at {address} never had {cpus} CPUs")


@pytest.fixture(scope="module")
def on_ray(plan, ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep-ray") / "out"
    return (out, *_sweep_killing_one_cell(plan, out, "--engine", "ray", "--address", ray_cluster))


def _sweep(out: Path) -> dict:
    return json.loads((out / "sweep.json").read_text())


def _cell(out: Path, name: str) -> dict:
    return json.loads((out / "cells" / f"{name}.json").read_text())


@pytest.mark.e2e
def test_the_local_engine_reruns_a_cell_whose_process_was_killed(local):
    out, killed, pid, output = local
    sweep = _sweep(out)
    assert [c["status"] for c in sweep["cells"]] == ["done"] * 4, output
    record = _cell(out, killed)
    assert record["attempts"] == 2 and record["pid"] != pid
    assert "sweep: 4/4 cells done, 0 running, 0 failed" in output
    for name in record["files"]:
        assert (out / name).is_file() and name.endswith(".edgekit")


@pytest.mark.e2e
def test_ray_gives_the_local_engines_figures_and_picks_with_a_killed_worker_retried(local, on_ray):
    local_sweep, ray_sweep = _sweep(local[0]), _sweep(on_ray[0])
    out, killed, pid, output = on_ray
    assert [c["status"] for c in ray_sweep["cells"]] == ["done"] * 4, output
    assert _cell(out, killed)["pid"] != pid  # Ray ran the killed cell again, in another worker

    def figures(sweep: dict) -> list[tuple]:
        return [
            (r["part"], r["model"], r.get("target"), r.get("precision"), r["status"], r.get("image_auroc"))
            for r in sweep["rows"]
        ]

    assert figures(ray_sweep) == figures(local_sweep)
    assert len(local_sweep["rows"]) == 8  # 2 parts x 2 models x 2 precisions: a bundle or a refusal each
    picks = [(p["part"], p["target"], p.get("model"), p.get("precision")) for p in local_sweep["picks"]]
    assert picks == [(p["part"], p["target"], p.get("model"), p.get("precision")) for p in ray_sweep["picks"]]
    assert all(p.get("model") for p in local_sweep["picks"])


@pytest.mark.e2e
def test_a_finished_sweep_run_again_does_no_work(plan, local):
    out = local[0]
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    again = subprocess.run(
        [sys.executable, "-m", "edgekit", "sweep", str(plan), "--out", str(out)], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert "all 4 cells are finished; nothing to run" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == stamps


@pytest.mark.e2e
def test_changed_gates_rejudge_the_recorded_checks_without_redoing_a_cell(plan, local, tmp_path):
    """A cell records what its checks measured; the report judges it with the plan's gates of the day."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(local[0], out)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    checks = [row["check"] for row in _sweep(out)["rows"] if row.get("check")]
    assert checks and all(len(c["flips"]) == round((1 - c["agreement"]) * c["images"]) for c in checks)
    for gates, judged in (
        ("max_auroc_drop = 0.0\nmin_agreement = 1.0", lambda c: c["auroc_drop"] <= 0 and not c["flips"]),
        (
            "max_auroc_drop = 1.0\nmin_agreement = 1.0\nborderline = 0.5",
            lambda c: max(map(abs, c["flips"]), default=0) <= 0.5,
        ),
    ):
        strict = plan.parent / "strict.toml"  # beside the plan: the parts' data paths resolve the same
        strict.write_text(plan.read_text().replace("max_auroc_drop = 0.05", gates))
        again = subprocess.run(
            [sys.executable, "-m", "edgekit", "sweep", str(strict), "--out", str(out)], capture_output=True, text=True
        )
        assert again.returncode == 0 and "all 4 cells are finished; nothing to run" in again.stderr, again.stderr
        assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == stamps
        rows = [row for row in _sweep(out)["rows"] if row.get("check")]
        assert [row["check"]["passed"] for row in rows] == [bool(judged(row["check"])) for row in rows]


@pytest.mark.e2e
def test_the_report_has_every_variant_the_pareto_front_and_the_picks(local):
    out = local[0]
    markdown = (out / "sweep.md").read_text()
    assert markdown.count("- for part ") == 2 and "## brick" in markdown and "## grass" in markdown
    html = (out / "report.html").read_text()
    assert "brick on x86" in html and "grass on x86" in html
    sweep = _sweep(out)
    for row in sweep["rows"]:
        if row["status"] == "ok" and row["precision"] == "int8":
            assert row["check"]["reference"].endswith("openvino-fp32-bank-default.edgekit")
    assert any(row.get("pareto") for row in sweep["rows"])


@pytest.mark.e2e
@pytest.mark.parametrize(
    "text, message",
    [
        ("[sweep]\ntargets = ['x86']\n", "the plan needs at least one [[parts]] entry"),
        ("[sweep]\ntargets = ['mars']\n[[parts]]\nname='a'\ndata='d'\n[[models]]\nmodel='dfm'\n", "sweep.targets"),
        ("[sweep]\ntargets = ['x86']\n[[parts]]\nname='a'\ndata='d'\n[[models]]\nmodel='nope'\n", "models.model must"),
        ("[sweep]\ntargets = ['x86']\n[gates]\nlatency_ms = { rpi4 = 5 }\n", "not in sweep.targets"),
        ("[sweep]\ntargets = ['x86']\n[gates]\nborderline = 1\n", "gates.borderline must be a share"),
        ("[sweep]\ntargets = ['x86']\ncolour = 1\n", "unknown key sweep.colour"),
        ("not toml [", "not a TOML plan"),
        ("[sweep]\ntargets = ['x86']\n[[parts]]\nname='a'\ndata='gone'\n[[models]]\nmodel='dfm'\n", "no such data"),
    ],
)
def test_a_bad_plan_is_one_line_before_any_work(tmp_path, text, message):
    from cli_helpers import run

    (tmp_path / "d").mkdir()  # the data the plans name, so each fails on its own mistake
    (tmp_path / "plan.toml").write_text(text)
    result = run("sweep", tmp_path / "plan.toml", "--out", tmp_path / "out")
    assert result.exit_code == 1 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
