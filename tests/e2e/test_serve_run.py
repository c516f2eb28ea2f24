"""`edgekit run` end to end with real parts: a video written by OpenCV, a folder written while it is
watched, an MJPEG-over-HTTP stream killed and restarted mid-run, and SIGTERM.

Every check compares what the service says with what ``Detector.predict`` says about the same
frames, so a pipeline that skipped, reordered or mis-coloured frames fails.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_error_line, run
from PIL import Image

import edgekit

pytestmark = pytest.mark.e2e

cv2 = pytest.importorskip("cv2")
HERE = Path(__file__).parent
#: the video's frames: normal brick images, with defects at these indices
DEFECT_AT = {2: "scratch/000.png", 5: "missing/000.png", 7: "stain/001.png"}
FRAMES = 10


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def detector(x86_bundle):
    return edgekit.load(x86_bundle)


@pytest.fixture(scope="module")
def video(brick, tmp_path_factory) -> Path:
    """A lossless (FFV1) video of brick test images: normal frames and defects at DEFECT_AT."""
    out = tmp_path_factory.mktemp("video") / "line.avi"
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"FFV1"), 10, (256, 256))
    assert writer.isOpened()
    for index in range(FRAMES):
        name = DEFECT_AT.get(index, f"good/{index:03d}.png")
        writer.write(cv2.cvtColor(_rgb(brick / "test" / name), cv2.COLOR_RGB2BGR))
    writer.release()
    return out


def _decoded(video: Path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(video)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def _events(path: Path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "the events file ends in half a line"
    return [json.loads(line) for line in text.splitlines()]


def _edgekit(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edgekit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_video_events_flag_exactly_the_frames_predict_flags(detector, x86_bundle, video, tmp_path):
    events_file = tmp_path / "events.jsonl"
    result = run("run", x86_bundle, "--source", video, "--events", events_file)
    assert result.exit_code == 0, result.output
    events = _events(events_file)
    frames = _decoded(video)
    assert [e["frame"] for e in events] == list(range(FRAMES))  # a video file: every frame, in order
    expected = [detector.predict(frame, color="bgr") for frame in frames]
    assert [e["is_anomalous"] for e in events] == [p.is_anomalous for p in expected]
    assert {i for i, e in enumerate(events) if e["is_anomalous"]} == set(DEFECT_AT)
    np.testing.assert_allclose([e["raw_score"] for e in events], [p.raw_score for p in expected], rtol=1e-6)
    assert {e["bundle"] for e in events} == {detector.fingerprint}
    assert all(e["source"] == str(video) and e["latency_ms"] > 0 for e in events)


def test_throughput_mode_scores_every_frame_and_keeps_their_order(detector, x86_bundle, video, tmp_path):
    """Two lanes score frames at once; events still come out in frame order with predict's scores."""
    events_file = tmp_path / "events.jsonl"
    result = run(
        "run", x86_bundle, "--source", video, "--events", events_file, "--mode", "throughput", "--threads", "2"
    )
    assert result.exit_code == 0, result.output
    events = _events(events_file)
    assert [e["frame"] for e in events] == list(range(FRAMES))
    expected = [detector.predict(frame, color="bgr") for frame in _decoded(video)]
    np.testing.assert_allclose([e["raw_score"] for e in events], [p.raw_score for p in expected], rtol=1e-5)
    result = run(
        "run",
        x86_bundle,
        "--source",
        video,
        "--events",
        tmp_path / "five.jsonl",
        "--mode",
        "throughput",
        "--threads",
        "2",
        "--max-frames",
        "5",
    )
    assert result.exit_code == 0 and [e["frame"] for e in _events(tmp_path / "five.jsonl")] == list(range(5))


def test_predict_gives_the_same_verdicts_in_both_modes(x86_bundle, brick):
    folder = brick / "test" / "scratch"
    outputs = [
        json.loads(run("predict", x86_bundle, folder, "--json", "--threads", "2", "--mode", mode).output)
        for mode in ("latency", "throughput")
    ]
    assert [r["image"] for r in outputs[0]] == [r["image"] for r in outputs[1]]
    np.testing.assert_allclose([r["raw_score"] for r in outputs[1]], [r["raw_score"] for r in outputs[0]], rtol=1e-5)


def test_bgr_frames_are_scored_like_rgb_only_when_said(detector, brick):
    rgb = _rgb(brick / "test" / "good" / "003.png")
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    truth = detector.predict(rgb)
    assert detector.predict(bgr, color="bgr").raw_score == pytest.approx(truth.raw_score, rel=1e-6)
    swapped = detector.predict(bgr)  # BGR read as RGB: red and blue swapped
    assert not truth.is_anomalous and swapped.is_anomalous and swapped.raw_score > 1.2 * truth.raw_score
    with pytest.raises(edgekit.EdgekitError, match="color must be one of rgb, bgr"):
        detector.predict(rgb, color="BGR ")


def test_one_detector_shared_by_threads_gives_each_image_its_own_score(detector, brick):
    images = [_rgb(p) for p in sorted((brick / "test").glob("*/00[0-1].png"))]
    truth = [detector.predict(image).raw_score for image in images]
    results: dict[tuple[int, int], float] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for round_ in range(6):
                index = (worker + round_) % len(images)
                results[(worker, round_)] = detector.predict(images[index]).raw_score
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for (worker, round_), raw in results.items():
        assert raw == pytest.approx(truth[(worker + round_) % len(images)], rel=1e-6)


def test_watched_folder_scores_each_file_once_even_while_it_is_written(detector, x86_bundle, brick, tmp_path):
    inbox, events_file = tmp_path / "inbox", tmp_path / "events.jsonl"
    inbox.mkdir()
    (inbox / "early.png").write_bytes((brick / "test" / "good" / "000.png").read_bytes())
    process = _edgekit("run", str(x86_bundle), "--source", str(inbox), "--watch", "--events", str(events_file))
    try:
        _wait_for(lambda: events_file.exists() and len(_events(events_file)) == 1, 60, "the file already there")
        sources = ["test/scratch/001.png", "test/good/004.png", "test/missing/002.png"]
        for index, name in enumerate(sources):
            data = (brick / name).read_bytes()
            with open(inbox / f"late{index}.png", "wb") as handle:  # written in two parts, slowly
                handle.write(data[: len(data) // 2])
                handle.flush()
                time.sleep(0.6)
                handle.write(data[len(data) // 2 :])
            time.sleep(0.2)
        (inbox / "notes.txt").write_text("not an image")
        _wait_for(lambda: len(_events(events_file)) == 4, 60, "the files written while watched")
        time.sleep(1.0)  # a second look must not score anything again
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    events = _events(events_file)
    assert [Path(e["name"]).name for e in events] == ["early.png", "late0.png", "late1.png", "late2.png"]
    expected = [detector.predict(brick / "test" / "good" / "000.png")] + [
        detector.predict(brick / name) for name in sources
    ]
    np.testing.assert_allclose([e["raw_score"] for e in events], [p.raw_score for p in expected], rtol=1e-6)
    assert [e["is_anomalous"] for e in events] == [False, True, False, True]
    assert "stopped by signal: 4 frames scored" in stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _camera(port: int, *images: Path) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, str(HERE / "mjpeg_server.py"), str(port), *map(str, images)], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout.readline().strip() == "ready"
    return server


def test_stream_that_dies_is_reconnected_and_sigterm_leaves_whole_files(x86_bundle, brick, tmp_path):
    port = _free_port()
    images = [brick / "test" / "good" / "000.png", brick / "test" / "scratch" / "000.png"]
    events_file, saved = tmp_path / "events.jsonl", tmp_path / "anomalies"
    camera = _camera(port, *images)
    process = _edgekit(
        "run",
        str(x86_bundle),
        "--source",
        f"http://127.0.0.1:{port}/stream.mjpg",
        "--events",
        str(events_file),
        "--save-anomalies",
        str(saved),
        "--keep",
        "5",
    )
    try:
        _wait_for(lambda: events_file.exists() and len(_events(events_file)) >= 5, 60, "frames from the stream")
        camera.kill()  # the camera dies mid-run ...
        camera.wait()
        time.sleep(1.5)
        before = len(_events(events_file))
        camera = _camera(port, *images)  # ... and comes back on the same address
        _wait_for(lambda: len(_events(events_file)) >= before + 5, 60, "frames after the reconnection")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
        camera.kill()
    assert process.returncode == 0, stderr
    assert "lost after frame" in stderr and "reconnected" in stderr
    assert "Traceback" not in stderr
    events = _events(events_file)  # every line whole
    frames = [e["frame"] for e in events]
    assert frames == sorted(set(frames))  # ids only grow, across the reconnection too
    anomalous = [e for e in events if e["is_anomalous"]]
    assert anomalous and len(anomalous) < len(events)  # the stream alternates a normal and a scratch
    stems = {re.match(r"(.+_f\d{8})", p.name).group(1) for p in saved.iterdir()}
    assert not [p for p in saved.iterdir() if p.name.startswith(".")], "a half-written file was left"
    assert 0 < len(stems) <= 5  # --keep 5
    for stem in stems:
        assert {p.name for p in saved.iterdir() if p.name.startswith(stem)} == {
            f"{stem}.png",
            f"{stem}_overlay.jpg",
            f"{stem}.json",
        }
        assert json.loads((saved / f"{stem}.json").read_text())["is_anomalous"] is True
        assert Image.open(saved / f"{stem}.png").size == (256, 256)


def test_run_options_limit_frames_and_time(x86_bundle, video, tmp_path):
    events_file = tmp_path / "events.jsonl"
    result = run("run", x86_bundle, "--source", video, "--events", events_file, "--max-frames", 3)
    assert result.exit_code == 0, result.output
    assert [e["frame"] for e in _events(events_file)] == [0, 1, 2]
    started = time.monotonic()
    result = run(
        "run",
        x86_bundle,
        "--source",
        video,
        "--events",
        "none",
        "--fps",
        4,
        "--save-frames",
        tmp_path / "frames",
        "--save-every",
        3,
    )
    assert result.exit_code == 0 and "source ended: 10 frames scored" in result.stderr
    assert time.monotonic() - started >= 9 / 4 - 0.05  # --fps paces a file source
    saved = sorted((tmp_path / "frames").iterdir())
    assert [int(p.name.split("_f")[1][:8]) for p in saved] == [0, 3, 6, 9]
    decoded = _decoded(video)
    for path in saved:  # the frames as the source delivered them, RGB, lossless: ready for edgekit fit
        index = int(path.name.split("_f")[1][:8])
        np.testing.assert_array_equal(_rgb(path), cv2.cvtColor(decoded[index], cv2.COLOR_BGR2RGB))


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give --source SRC, --serve [HOST:PORT], or both"),
        (["--source", "nowhere/at/all.mp4"], "no such camera, video file, image folder, glob or stream URL"),
        (["--source", "VIDEO", "--watch"], "--watch takes an image folder or a glob"),
        (["--source", "VIDEO", "--fps", "0"], "--fps must be positive"),
        (["--source", "EMPTY"], "no image files"),
        (["--source", "VIDEO", "--events", "EMPTY"], "is a folder; give a file name"),
        (["--source", "VIDEO", "--user", "pi"], "--user goes with --print-systemd-unit"),
    ],
)
def test_run_refuses_bad_options_in_one_line(x86_bundle, video, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [{"VIDEO": str(video), "EMPTY": str(tmp_path / "empty")}.get(a, a) for a in args]
    assert_one_error_line(run("run", x86_bundle, *args), message)


def test_predict_takes_folders_globs_and_stdin_and_can_fail_on_anomaly(x86_bundle, brick):
    good, scratch = brick / "test" / "good", brick / "test" / "scratch"
    result = run("predict", x86_bundle, good, "--fail-on-anomaly", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)) == len(list(good.glob("*.png")))
    result = run("predict", x86_bundle, scratch / "00[0-2].png", "--fail-on-anomaly")
    assert result.exit_code == 3 and result.output.count("ANOMALOUS") == 3
    piped = subprocess.run(
        [sys.executable, "-m", "edgekit", "predict", str(x86_bundle), "-", "--json"],
        input=(scratch / "000.png").read_bytes(),
        capture_output=True,
    )
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)[0]["is_anomalous"] is True
    assert_one_error_line(run("predict", x86_bundle, good / "*.nothing"), "no file matches this pattern")


def test_systemd_unit_runs_the_same_command_with_absolute_paths(x86_bundle, video, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "run",
        str(x86_bundle),
        "--source",
        str(video),
        "--events",
        "ev.jsonl",
        "--serve",
        "--token",
        "s3cret",
        "--print-systemd-unit",
        "--user",
        "pi",
    ]
    monkeypatch.setattr(sys, "argv", [str(Path(sys.executable).with_name("edgekit")), *args])
    result = run(*args)
    assert result.exit_code == 0, result.output
    unit = result.stdout
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert str(Path(x86_bundle).resolve()) in exec_start and str(video.resolve()) in exec_start
    assert exec_start.split()[0] == f'ExecStart="{Path(sys.executable).with_name("edgekit")}"'  # this venv's
    assert "--print-systemd-unit" not in exec_start and "--user" not in exec_start
    assert "s3cret" not in unit and "--token" not in exec_start  # secrets never on a readable command line
    assert "EnvironmentFile=/etc/edgekit/edgekit.env" in unit and "EDGEKIT_TOKEN=" in result.stderr
    assert "User=pi" in unit and f"WorkingDirectory={tmp_path}" in unit
