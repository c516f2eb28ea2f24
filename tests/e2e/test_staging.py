"""--overwrite replaces only edgekit's own folders; SIGTERM and SIGKILL leave no staging behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import assert_one_error_line, run

from edgekit.errors import EdgekitError
from edgekit.staging import owner_tag, sweep_stale
from edgekit.train.run import RunWriter

WORKTREE = str(Path(__file__).resolve().parents[2])


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def unrelated(tmp_path) -> Path:
    """A user's folder full of their own files."""
    folder = tmp_path / "holiday-photos"
    (folder / "2024").mkdir(parents=True)
    (folder / "2024" / "beach.jpg").write_bytes(b"not ours")
    (folder / "notes.txt").write_text("keep me")
    return folder


@pytest.fixture
def dataset(tmp_path) -> Path:
    folder = tmp_path / "data" / "brick"
    (folder / "train" / "good").mkdir(parents=True)
    (folder / "train" / "good" / "000.png").write_bytes(b"png")
    return folder


# -- --overwrite ---------------------------------------------------------------------------------------


def test_train_overwrite_refuses_an_unrelated_folder(dataset, unrelated):
    before = _tree(unrelated)
    result = run("train", "--model", "sae", "--data", dataset, "--out", unrelated, "--overwrite")
    assert_one_error_line(result, "refusing to replace", "not an edgekit training run")
    assert _tree(unrelated) == before


def test_train_overwrite_refuses_the_dataset_and_the_folder_holding_it(dataset):
    before = _tree(dataset.parent)
    assert_one_error_line(
        run("train", "--model", "sae", "--data", dataset, "--out", dataset, "--overwrite"),
        "refusing to replace",
        "the data",
    )
    assert_one_error_line(
        run("train", "--model", "sae", "--data", dataset, "--out", dataset.parent, "--overwrite"),
        "refusing to replace",
        "holds it",
    )
    assert _tree(dataset.parent) == before


def test_train_overwrite_refuses_the_data_even_inside_an_old_run(tmp_path, dataset):
    (tmp_path / "data" / "run.json").write_text("{}")  # the data sits in a folder that looks like a run
    assert_one_error_line(
        run("train", "--model", "sae", "--data", dataset, "--out", tmp_path / "data", "--overwrite"), "the data"
    )
    assert (dataset / "train" / "good" / "000.png").is_file()


def test_train_overwrite_refuses_the_current_folder_and_its_parents(dataset, tmp_path, monkeypatch):
    work = tmp_path / "project" / "work"
    work.mkdir(parents=True)
    (work / "run.json").write_text("{}")
    monkeypatch.chdir(work)
    for out in (".", "..", str(work)):
        assert_one_error_line(
            run("train", "--model", "sae", "--data", dataset, "--out", out, "--overwrite"), "the current folder"
        )
    assert (work / "run.json").is_file()


def test_run_writer_replaces_a_run_folder_or_an_empty_one(tmp_path):
    old_run = tmp_path / "run"
    old_run.mkdir()
    (old_run / "run.json").write_text("{}")
    (old_run / "stale.npy").write_bytes(b"x")
    with RunWriter(old_run, overwrite=True) as writer:
        writer.save_json("metrics.json", {})
        writer.commit({"model": "sae"})
    assert sorted(p.name for p in old_run.iterdir()) == ["metrics.json", "run.json"]
    (tmp_path / "empty").mkdir()
    with RunWriter(tmp_path / "empty", overwrite=True) as writer:
        writer.commit({"model": "sae"})
    assert (tmp_path / "empty" / "run.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "run"]  # no staging left


def test_run_writer_refuses_a_non_run_in_the_library_too(unrelated):
    with pytest.raises(EdgekitError, match="not an edgekit training run"):
        RunWriter(unrelated, overwrite=True)


def test_synth_overwrite_replaces_only_its_own_dataset(tmp_path):
    from edgekit.data.synth import synthesize

    foreign = tmp_path / "out" / "brick"
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("keep")
    result = run("data", "synth", "--out", tmp_path / "out", "--size", "32", "--overwrite")
    assert_one_error_line(result, "refusing to replace", "synthetic dataset")
    assert _tree(foreign) == ["mine.txt"]
    (foreign / "mine.txt").unlink()
    small = dict(texture="grass", size=32, n_train=2, n_test_good=1, n_per_defect=0)
    (made,) = synthesize(tmp_path / "out", **small)
    (again,) = synthesize(tmp_path / "out", overwrite=True, **small)
    assert made == again and (again / "synth.json").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["brick", "grass"]


def test_export_overwrite_refuses_a_non_bundle_before_any_work(tmp_path, unrelated):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(
        json.dumps({"format": 1, "model": "patchcore", "holdout_images": [str(tmp_path / "gone.png")]})
    )
    before = _tree(unrelated)
    assert_one_error_line(run("export", run_dir, "--out", unrelated, "--overwrite"), "not an edgekit bundle")
    assert_one_error_line(run("export", run_dir, "--out", run_dir, "--overwrite"), "the data")
    assert _tree(unrelated) == before and (run_dir / "run.json").is_file()


# -- stale staging -------------------------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_sweep_removes_only_this_hosts_staging_whose_process_is_gone(tmp_path):
    host = owner_tag().split(".")[0]
    dead, alive = _dead_pid(), os.getppid()
    names = {
        f".edgekit-export-{host}.{dead}-abc": True,
        f".edgekit-export-{host}.{alive}-def": False,
        f".edgekit-export-{host}.{os.getpid()}-ghi": False,
        f".edgekit-export-otherhost.{dead}-jkl": False,
        f".edgekit-export-{host}x.{dead}-mno": False,
        "edgekit-export-unrelated": False,
    }
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "network.onnx").write_bytes(b"x")
    removed = sweep_stale(".edgekit-export-", tmp_path)
    assert [p.name for p in removed] == [n for n, stale in names.items() if stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, stale in names.items() if not stale)


# -- real processes, signalled mid-work ------------------------------------------------------------------


def _edgekit(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": WORKTREE, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "edgekit", *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _wait_for(pattern: str, folder: Path, process: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no {pattern} in {folder} within {timeout} s")


@pytest.fixture(scope="module")
def grey_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grey")
    done = _edgekit("data", "synth", "--size", "128", "--grayscale", "--out", str(out))
    assert done.wait(120) == 0, done.communicate()
    return out / "brick"


@pytest.fixture(scope="module")
def sae_run(grey_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sae") / "run"
    done = _edgekit("train", "--model", "sae", "--data", str(grey_data), "--out", str(out))
    assert done.wait(600) == 0, done.communicate()
    return out


def test_sigterm_during_training_removes_its_staging(grey_data, tmp_path):
    process = _edgekit("train", "--model", "sae", "--data", str(grey_data), "--out", str(tmp_path / "run"))
    _wait_for(".run.run-*", tmp_path, process)
    time.sleep(1.0)  # into the training loop
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "error: terminated"
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_export_removes_its_staging_in_tmpdir(sae_run, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    process = _edgekit("export", str(sae_run), "--out", str(tmp_path / "bundle"), env={"TMPDIR": str(tmpdir)})
    _wait_for(".edgekit-export-*", tmpdir, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert list(tmpdir.iterdir()) == [] and not (tmp_path / "bundle").exists()


def test_staging_left_by_sigkill_is_swept_by_the_next_run_of_the_same_out(grey_data, tmp_path):
    process = _edgekit("train", "--model", "sae", "--data", str(grey_data), "--out", str(tmp_path / "run"))
    left = _wait_for(".run.run-*", tmp_path, process)
    process.kill()
    process.communicate(timeout=60)
    assert left.is_dir()  # SIGKILL cannot be handled
    (tmp_path / "other").mkdir()
    with RunWriter(tmp_path / "other"):  # another run's staging is not ours to sweep
        assert left.is_dir()
    with RunWriter(tmp_path / "run") as writer:
        assert not left.exists() and writer.tmp.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]
