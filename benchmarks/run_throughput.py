"""``edgekit run`` on the device path: sustained frames/s vs a bare predict loop, latency, and RSS over a long run.

    python3 benchmarks/run_throughput.py [--workdir DIR] [--bundle DIR] [--frames 300] [--rounds 5]
                                         [--minutes 30] [--no-serve] [--skip-throughput] [--skip-rss]
                                         [--markdown FILE] [--csv FILE]

1. Synthesizes the brick data, trains PatchCore (Lite0) and exports an x86 OpenVINO fp32 bundle
   (or takes ``--bundle``), and writes a lossless FFV1 video that cycles the test images (normal and
   defect), so every frame is exactly a test image.
2. Throughput, in interleaved rounds (A then B, ``--rounds`` times; the ratio is per round, the
   median is reported): (A) ``edgekit run BUNDLE --source VIDEO --events FILE`` through the console
   script, frames/s from the events' own times, first to last, so model load is not counted;
   (B) a fresh process that loads the bundle with ``edgekit.load``, decodes every frame with OpenCV
   first (BGR→RGB) and times ``predict`` over them. Both rates are (frames − 1) / (first verdict →
   last verdict), so each leaves out the first, cold prediction. A/B ≥ 1 means capture and decode
   are hidden behind inference.
3. Memory: ``edgekit run`` on an MJPEG stream (``tests/mjpeg_server.py``, normal and defect images)
   with events, saved anomalies (``--keep 20``) and the page/API, for ``--minutes``; VmRSS is read
   from /proc every ``--sample-s`` seconds. Reported: RSS at 1 min, at the end, the max, the drift
   and a least-squares slope from 1 min on.

Prints Markdown tables with the machine and the commands; writes only into a temporary folder
(or ``--workdir``), and to ``--markdown`` (the tables) and ``--csv`` (every RSS sample) when given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VIDEO_FPS = 20  # only the container's nominal rate: a video file is read as fast as inference takes it


def _prepare(workdir: Path, bundle: Path | None) -> tuple[Path, list]:
    """The bundle (made here unless given) and the synthetic brick test samples."""
    from edgekit.data.datasets import open_dataset
    from edgekit.data.synth import synthesize

    category = workdir / "data" / "brick"
    if not (category / "test").is_dir():
        (category,) = synthesize(workdir / "data", texture="brick", seed=0, overwrite=True)
    if bundle is None:
        bundle = workdir / "bundle"
        if not _usable(bundle):  # a kept --workdir: reuse its bundle while this edgekit still loads it
            from edgekit.export.pipeline import export_run
            from edgekit.families.patchcore.train import train_patchcore

            run = train_patchcore(category, workdir / "run", overwrite=True)
            export_run(run.path, bundle, target="x86", overwrite=True)
    return bundle, list(open_dataset(category).test)


def _usable(bundle: Path) -> bool:
    from edgekit.bundle import load_bundle
    from edgekit.errors import EdgekitError

    try:
        load_bundle(bundle)
        return True
    except EdgekitError:
        return False


def _write_video(paths: list[Path], out: Path, frames: int) -> None:
    """An FFV1 .avi of ``frames`` frames cycling ``paths``, checked to decode bit-exact."""
    import cv2

    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"FFV1"), VIDEO_FPS, (width, height))
    if not writer.isOpened():
        raise SystemExit("OpenCV cannot write FFV1 video here")
    for index in range(frames):
        writer.write(images[index % len(images)])
    writer.release()
    capture, index = cv2.VideoCapture(str(out)), 0
    while True:
        ok, pixels = capture.read()
        if not ok:
            break
        if not np.array_equal(pixels, images[index % len(images)]):
            raise SystemExit(f"{out}: frame {index} does not decode bit-exact")
        index += 1
    capture.release()
    if index != frames:
        raise SystemExit(f"{out}: {index} frames decoded, {frames} written")


def _bare_child(bundle: str, video: str) -> None:
    """(B) in this fresh process: load, decode everything, then time predict alone.

    The bundle is loaded before OpenCV is imported, in the order ``edgekit run`` does it.
    """
    import edgekit

    detector = edgekit.load(bundle)
    import cv2

    capture, frames = cv2.VideoCapture(video), []
    while True:
        ok, pixels = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB))
    capture.release()
    done, took, verdicts = [], [], []
    for frame in frames:
        t0 = time.perf_counter()
        verdicts.append(detector.predict(frame).is_anomalous)
        done.append(time.perf_counter())
        took.append((done[-1] - t0) * 1e3)
    print(
        "RESULT "
        + json.dumps(
            {
                "frames": len(frames),
                "seconds": done[-1] - done[0],
                "predict_ms": took,
                "anomalous": [int(v) for v in verdicts],
            }
        ),
        flush=True,
    )


def _events(path: Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _rate(events: list[dict]) -> float:
    """(frames − 1) / seconds from the first event's verdict to the last's."""
    times = [datetime.fromisoformat(e["time"]).timestamp() for e in events]
    return (len(times) - 1) / (times[-1] - times[0])


def _edgekit_command() -> str:
    """The console script beside this interpreter (not a shim that re-dispatches), else the one on PATH."""
    beside = Path(sys.executable).parent / "edgekit"
    return str(beside) if beside.is_file() else (shutil.which("edgekit") or "edgekit")


def _service_round(bundle: Path, video: Path, tmp: Path, round_no: int) -> dict:
    events = tmp / f"events_{round_no}.jsonl"
    command = [_edgekit_command(), "run", str(bundle), "--source", str(video), "--events", str(events)]
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"edgekit run failed ({done.returncode}):\n{done.stderr}")
    rows = _events(events)
    f2e = np.array([e["frame_to_event_ms"] for e in rows])
    return {
        "command": command,
        "frames": len(rows),
        "fps": _rate(rows),
        "wall": wall,
        "f2e": f2e,
        "predict_ms": np.array([e["latency_ms"] for e in rows]),
        "anomalous": [int(e["is_anomalous"]) for e in sorted(rows, key=lambda e: e["frame"])],
        "stderr": done.stderr.strip().splitlines(),
    }


def _bare_round(bundle: Path, video: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--bare-child", str(bundle), str(video)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"bare predict loop failed ({done.returncode}):\n{done.stderr}")
    result = json.loads(lines[-1][len("RESULT ") :])
    result["fps"] = (result["frames"] - 1) / result["seconds"]
    result["command"] = command
    return result


def throughput(bundle: Path, video: Path, tmp: Path, rounds: int) -> dict:
    """Interleaved rounds of (A) ``edgekit run`` on the video and (B) the bare loop."""
    service, bare = [], []
    for round_no in range(rounds):
        service.append(_service_round(bundle, video, tmp, round_no))
        bare.append(_bare_round(bundle, video))
        print(
            f"  round {round_no + 1}/{rounds}: A {service[-1]['fps']:.1f} fps, B {bare[-1]['fps']:.1f} fps, "
            f"A/B {service[-1]['fps'] / bare[-1]['fps']:.3f}",
            file=sys.stderr,
            flush=True,
        )
    return {"service": service, "bare": bare}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, VmHWM (kB), thread count and open file descriptors of a running process."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads"):
                values[key] = int(rest.split()[0])
    values["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return values


def _serve_port(stderr_path: Path) -> int | None:
    for line in stderr_path.read_text(errors="replace").splitlines():
        if "page and API on http://" in line:
            return int(line.rsplit(":", 1)[1].split("/")[0])
    return None


def _long_run(bundle: Path, images: list[Path], tmp: Path, seconds: float, sample_s: float, serve: bool) -> dict:
    """One ``edgekit run`` on a live MJPEG stream for ``seconds``, VmRSS sampled every ``sample_s``."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "mjpeg_server.py"), str(port), *map(str, images)],
        stdout=subprocess.PIPE,
        text=True,
    )
    proc = None
    try:
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("tests/mjpeg_server.py did not start")
        events, saved, stderr_path = tmp / "long.jsonl", tmp / "anomalies", tmp / "long.stderr"
        command = [
            _edgekit_command(),
            "run",
            str(bundle),
            "--source",
            f"http://127.0.0.1:{port}/stream.mjpg",
            "--events",
            str(events),
            "--save-anomalies",
            str(saved),
            "--keep",
            "20",
            "--duration",
            f"{seconds:g}",
        ] + (["--serve", "127.0.0.1:0"] if serve else [])
        with open(stderr_path, "w") as stderr:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        started = time.monotonic()
        samples, loads, metrics_ok, metrics_failed, api_port = [], [], 0, 0, None
        while True:
            try:
                proc.wait(timeout=max(0.0, started + (len(samples) + 1) * sample_s - time.monotonic()))
                break
            except subprocess.TimeoutExpired:
                pass
            try:
                status = _proc_status(proc.pid)
            except (FileNotFoundError, ProcessLookupError):
                break
            samples.append((time.monotonic() - started, status))
            loads.append(os.getloadavg()[0])
            if serve:
                api_port = api_port or _serve_port(stderr_path)
                try:  # what a page or a Prometheus scraper would do alongside
                    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=5) as reply:
                        reply.read()
                    metrics_ok += 1
                except Exception:
                    metrics_failed += 1
        returncode = proc.wait()
        proc = None
    finally:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    stderr_lines = stderr_path.read_text(errors="replace").strip().splitlines()
    rows = _events(events) if events.is_file() else []
    return {
        "command": command,
        "returncode": returncode,
        "samples": samples,
        "loads": loads,
        "stderr": stderr_lines,
        "events": rows,
        "saved_files": len(list(saved.iterdir())) if saved.is_dir() else 0,
        "metrics_ok": metrics_ok,
        "metrics_failed": metrics_failed,
        "serve": serve,
    }


def memory(bundle: Path, images: list[Path], tmp: Path, minutes: float, sample_s: float, serve: bool) -> dict:
    """The long run; when ``--serve`` makes ``edgekit run`` fail at start, once more without it."""
    result = _long_run(bundle, images, tmp, minutes * 60, sample_s, serve)
    if serve and result["returncode"] != 0 and len(result["samples"]) * sample_s < 60:
        print(
            "  --serve failed at start; running without it:\n    " + "\n    ".join(result["stderr"][-3:]),
            file=sys.stderr,
            flush=True,
        )
        failed = result
        shutil.rmtree(tmp / "anomalies", ignore_errors=True)
        (tmp / "long.jsonl").unlink(missing_ok=True)
        result = _long_run(bundle, images, tmp, minutes * 60, sample_s, serve=False)
        result["serve_error"] = failed["stderr"][-1] if failed["stderr"] else f"exit {failed['returncode']}"
    return result


def _write_csv(path: Path, result: dict) -> None:
    keys = ("VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads", "fds")
    rows = ["seconds," + ",".join(keys) + ",load1"]
    for (seconds, status), load in zip(result["samples"], result["loads"]):
        rows.append(f"{seconds:.1f}," + ",".join(str(status[k]) for k in keys) + f",{load:.2f}")
    path.write_text("\n".join(rows) + "\n")


def _machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor() or platform.machine(),
    )
    import cv2
    import openvino

    return (
        f"{os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {model}; "
        f"Python {platform.python_version()}, "
        f"OpenVINO {openvino.__version__}, OpenCV {cv2.__version__}, numpy {np.__version__}"
    )


def _quote(command: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(part) for part in command)


def _throughput_md(result: dict, frames: int, defects: int) -> list[str]:
    service, bare = result["service"], result["bare"]
    ratios = [s["fps"] / b["fps"] for s, b in zip(service, bare)]
    f2e = np.concatenate([s["f2e"] for s in service])
    predict_ms = np.concatenate([s["predict_ms"] for s in service])
    bare_ms = np.concatenate([b["predict_ms"] for b in bare])
    same = all(s["anomalous"] == b["anomalous"] for s, b in zip(service, bare))
    lines = [
        f"Video: {frames} frames, FFV1 (lossless, decodes bit-exact), 256×256, {defects} defect frames.",
        "",
        "| round | A: `edgekit run` frames/s | B: bare predict loop frames/s | A/B | A frames scored | "
        "A wall s (process) | A frame→event p50 / p99 ms |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for index, (s, b, ratio) in enumerate(zip(service, bare, ratios), 1):
        lines.append(
            f"| {index} | {s['fps']:.1f} | {b['fps']:.1f} | {ratio:.3f} | {s['frames']} | {s['wall']:.1f} | "
            f"{np.percentile(s['f2e'], 50):.1f} / {np.percentile(s['f2e'], 99):.1f} |"
        )
    lines += [
        "",
        "| measure | value |",
        "|---|---:|",
        f"| A frames/s, median of rounds | {np.median([s['fps'] for s in service]):.1f} |",
        f"| B frames/s, median of rounds | {np.median([b['fps'] for b in bare]):.1f} |",
        f"| **A/B, median of per-round ratios** (goal ≥ 1.0) | **{np.median(ratios):.3f}** |",
        f"| A/B min – max | {min(ratios):.3f} – {max(ratios):.3f} |",
        f"| A frame→event p50 / p99 ms (all rounds) | {np.percentile(f2e, 50):.1f} / {np.percentile(f2e, 99):.1f} |",
        f"| A predict alone (`latency_ms`) p50 / p99 ms | {np.percentile(predict_ms, 50):.1f} / "
        f"{np.percentile(predict_ms, 99):.1f} |",
        f"| B predict p50 / p99 ms | {np.percentile(bare_ms, 50):.1f} / {np.percentile(bare_ms, 99):.1f} |",
        f"| A end-to-end wall s, median (process start → exit, model load included) | "
        f"{np.median([s['wall'] for s in service]):.1f} |",
        f"| verdicts of A and B identical, frame by frame | {'yes' if same else '**no**'} |",
    ]
    extra = sorted(
        {
            line
            for s in service
            for line in s["stderr"]
            if not line.startswith("edgekit run: patchcore") and "frames scored" not in line
        }
    )
    lines.append(f"\nA's last log line (round 1): `{service[0]['stderr'][-1] if service[0]['stderr'] else ''}`")
    if extra:
        lines.append("Other stderr lines from A: " + "; ".join(f"`{line}`" for line in extra[:5]))
    return lines


def _memory_md(result: dict, sample_s: float) -> list[str]:
    samples = result["samples"]
    if not samples:
        return [
            f"No RSS sample: the process ended at once (exit {result['returncode']}): "
            + " / ".join(result["stderr"][-3:])
        ]
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1]["VmRSS"] for s in samples]) / 1024
    anon = np.array([s[1]["RssAnon"] for s in samples]) / 1024
    warm = int(np.searchsorted(t, 60.0))
    warm = min(warm, len(t) - 1)
    slope = np.polyfit(t[warm:], rss[warm:], 1)[0] * 3600 if len(t) - warm >= 2 else float("nan")
    drift = (rss[-1] - rss[warm]) / rss[warm] * 100
    # single samples catch transients (a frame being encoded, a request being served): also compare
    # the median of the minute after warm-up with the median of the last minute
    first_minute, last_minute = rss[(t >= t[warm]) & (t < t[warm] + 60)], rss[t > t[-1] - 60]
    robust = (np.median(last_minute) - np.median(first_minute)) / np.median(first_minute) * 100
    rows = result["events"]
    f2e = np.array([e["frame_to_event_ms"] for e in rows]) if rows else np.array([np.nan])
    predict_ms = np.array([e["latency_ms"] for e in rows]) if rows else np.array([np.nan])
    anomalies = sum(e["is_anomalous"] for e in rows)
    last = samples[-1][1]
    summary = next((line for line in reversed(result["stderr"]) if "frames scored" in line), "(no summary line)")
    serve = (
        "on (`--serve 127.0.0.1:0`; /metrics fetched at every sample: "
        f"{result['metrics_ok']} ok, {result['metrics_failed']} failed)"
        if result["serve"]
        else "off" + (f" (failed at start: `{result['serve_error']}`)" if "serve_error" in result else "")
    )
    lines = [
        "| measure | value |",
        "|---|---:|",
        f"| run length / samples | {t[-1] / 60:.1f} min / {len(t)} (every {sample_s:g} s) |",
        f"| RSS at {t[warm]:.0f} s (after warm-up) | {rss[warm]:.1f} MB |",
        f"| RSS at the end ({t[-1]:.0f} s) | {rss[-1]:.1f} MB |",
        f"| RSS max / min after warm-up | {rss[warm:].max():.1f} / {rss[warm:].min():.1f} MB |",
        f"| peak RSS (VmHWM) | {last['VmHWM'] / 1024:.1f} MB |",
        f"| **drift, end vs {t[warm]:.0f} s** (goal within ±5 %) | **{drift:+.2f} %** |",
        f"| drift, median of the last minute vs median of the minute from {t[warm]:.0f} s | {robust:+.2f} % |",
        f"| linear-fit slope from {t[warm]:.0f} s | {slope:+.2f} MB/hour |",
        f"| of which anonymous (heap) at {t[warm]:.0f} s → end, max | {anon[warm]:.1f} → {anon[-1]:.1f}, "
        f"{anon[warm:].max():.1f} MB |",
        f"| threads / open fds, first → last sample | {samples[0][1]['Threads']} → {last['Threads']} / "
        f"{samples[0][1]['fds']} → {last['fds']} |",
        f"| frames scored (events) / anomalous | {len(rows)} / {anomalies} |",
        f"| frame→event p50 / p99 ms (live) | {np.percentile(f2e, 50):.1f} / {np.percentile(f2e, 99):.1f} |",
        f"| predict alone (`latency_ms`) p50 / p99 ms (live) | {np.percentile(predict_ms, 50):.1f} / "
        f"{np.percentile(predict_ms, 99):.1f} |",
        f"| files in --save-anomalies at the end (--keep 20: ≤ 60) | {result['saved_files']} |",
        f"| page/API | {serve} |",
        f"| 1-min load average during the run, min / median / max | {min(result['loads']):.2f} / "
        f"{np.median(result['loads']):.2f} / {max(result['loads']):.2f} |",
        f"| exit status | {result['returncode']} |",
        "",
        f"Last log line: `{summary}`",
    ]
    extra = [
        line
        for line in result["stderr"]
        if "frames scored" not in line and not line.startswith(("edgekit run: patchcore", "edgekit run: page and API"))
    ]
    if extra:
        lines.append(f"Other stderr lines ({len(extra)}): " + "; ".join(f"`{line}`" for line in extra[:5]))
    minutes = [i for i in range(len(t)) if i == 0 or int(t[i] // 60) != int(t[i - 1] // 60)]
    lines += [
        "",
        "VmRSS, first sample of each minute (MB): " + ", ".join(f"{rss[i]:.1f}" for i in minutes),
        "",
        "RssAnon, same samples (MB): " + ", ".join(f"{anon[i]:.1f}" for i in minutes),
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--bare-child"]:
        _bare_child(*argv[1:3])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="Keep data, run, bundle and video here (reused).")
    parser.add_argument("--bundle", type=Path, default=None, help="Measure this bundle instead of training one.")
    parser.add_argument("--frames", type=int, default=300, help="Frames in the video.")
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved A/B rounds.")
    parser.add_argument("--minutes", type=float, default=30.0, help="Length of the RSS run.")
    parser.add_argument("--sample-s", type=float, default=10.0, help="Seconds between RSS samples.")
    parser.add_argument("--no-serve", action="store_true", help="RSS run without the page and API.")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--markdown", type=Path, default=None, help="Also write the results here.")
    parser.add_argument("--csv", type=Path, default=None, help="Write every RSS sample here.")
    args = parser.parse_args(argv)

    load_start = os.getloadavg()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgekit-run-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        tmp = Path(tempfile.mkdtemp(prefix="rounds-", dir=scratch))
        print(f"preparing data and bundle in {workdir}", file=sys.stderr, flush=True)
        bundle, test = _prepare(workdir, args.bundle)
        normals = [s.path for s in test if s.label == 0]
        defects = [s.path for s in test if s.label == 1]
        # the video interleaves one defect after every two normals (20 normals, 10 defects per cycle)
        cycle = [p for pair in zip(normals[0::2], normals[1::2], defects[0::4]) for p in pair]
        video = workdir / "frames.avi"
        frames = args.frames
        _write_video(cycle, video, frames)
        defect_frames = sum(1 for i in range(frames) if cycle[i % len(cycle)] in defects)
        out = [f"$ python3 benchmarks/{Path(__file__).name} " + " ".join(argv), "", f"Machine: {_machine()}."]
        if not args.skip_throughput:
            print(f"throughput: {args.rounds} rounds of A then B", file=sys.stderr, flush=True)
            result = throughput(bundle, video, tmp, args.rounds)
            out += [
                "",
                "### Throughput on a video file: `edgekit run` (A) vs a bare predict loop (B)",
                "",
                *_throughput_md(result, frames, defect_frames),
                "",
                "A: `" + _quote(result["service"][0]["command"]) + "`",
                "B: `" + _quote(result["bare"][0]["command"]) + "` (loads with `edgekit.load`, decodes all "
                "frames with cv2 and converts BGR→RGB, then times `predict` per frame with perf_counter)",
                "Rates: (frames − 1) / (first verdict → last verdict): A from the JSONL `time` fields "
                "(ms resolution), B from perf_counter after each predict; model load excluded from both.",
            ]
        if not args.skip_rss:
            stream_images = normals + defects[0::5]  # 20 normal + 8 defect JPEGs, looped at ~20 fps
            print(f"RSS: {args.minutes:g} min on an MJPEG stream", file=sys.stderr, flush=True)
            result = memory(bundle, stream_images, tmp, args.minutes, args.sample_s, serve=not args.no_serve)
            if args.csv is not None:
                _write_csv(args.csv, result)
            out += [
                "",
                f"### Memory over {args.minutes:g} min on a live MJPEG stream",
                "",
                f"Stream: `tests/mjpeg_server.py` on 127.0.0.1, {len(stream_images)} images looped "
                f"({len(stream_images) - len(defects[0::5])} normal, {len(defects[0::5])} defect) as JPEG q95 "
                f"at ~20 frames/s; RSS = VmRSS from /proc/PID/status of the `edgekit run` process.",
                "",
                *_memory_md(result, args.sample_s),
                "",
                "Command: `" + _quote(result["command"]) + "`",
            ]
        load_end = os.getloadavg()
        out += [
            "",
            f"Load average (1/5/15 min) at start {' / '.join(f'{v:.2f}' for v in load_start)}, "
            f"at end {' / '.join(f'{v:.2f}' for v in load_end)}; whole benchmark "
            f"{(time.monotonic() - began) / 60:.1f} min.",
        ]
    text = "\n".join(out)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
