"""On an emulated Raspberry Pi 4, the built wheel installed as a Pi user installs it, run through its console script.

``pip wheel`` builds edgekit-anomaly from this tree; an aarch64 venv (``../shared/aarch64/mkvenv.sh``)
installs ``<wheel>[litert,camera]`` with its own pip from PyPI (aarch64 wheels of numpy, Pillow,
ai-edge-litert and opencv-python-headless, nothing from this tree or the host's site-packages);
then ``DIR/bin/edgekit`` runs ``--version``, ``run`` on a video file, ``profile --target rpi4`` and ``fit``,
and their numbers are compared with the host's own scoring of the same rpi4 TFLite bundle.

The venv is built once and cached under ARM_ROOT (like the emulated Python itself); later sessions
re-install only the fresh wheel. Emulation is 150-400x slower than a Pi: a few frames, one bundle,
and no timing is asserted or reported. Without the emulator the tests skip on a workstation and
FAIL in CI (``CI=true``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import arm_helpers
import numpy as np
import pytest
from PIL import Image
from test_arm import TOLERANCE
from test_service import parse_unit, systemd_words

pytestmark = pytest.mark.e2e

ARM_ROOT = Path(os.environ.get("ARM_ROOT", arm_helpers.DEFAULT_ARM_ROOT))
EXTRAS = ("litert", "camera")  # rpi4's default format is TFLite; the camera extra reads the video
CPU = "a72"  # Raspberry Pi 4
#: the video, frame by frame (brick test images); --max-frames stops before the last two
VIDEO_FRAMES = (
    "good/000.png",
    "good/001.png",
    "scratch/000.png",
    "good/002.png",
    "missing/000.png",
    "good/003.png",
    "stain/000.png",
    "good/004.png",
)
MAX_FRAMES = 6
DEFECT_FRAMES = [i for i, name in enumerate(VIDEO_FRAMES[:MAX_FRAMES]) if not name.startswith("good/")]
#: the labelled subset `profile` scores under emulation: normals and one image of every defect kind
PROFILE_NORMALS = 4


@dataclass(frozen=True)
class PiVenv:
    path: Path
    wheel: Path
    install: dict[str, Any]  # what arm_helpers.ensure_device_venv recorded (install time, pip freeze)

    def edgekit(self, *args: str, cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
        """``DIR/bin/edgekit ARGS`` on the emulated Pi 4; fails the test with its stderr unless it exits 0."""
        done = subprocess.run(
            [str(self.path / "bin" / "edgekit"), *args],
            capture_output=True,
            text=True,
            env=arm_helpers.venv_env(CPU),
            cwd=str(cwd),
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"edgekit {' '.join(args)} exited {done.returncode} on the emulated Pi:\n{done.stderr[-3000:]}"
            )
        return done


def build_wheel(out: Path) -> Path:
    """The wheel of this tree, built with pip into ``out`` (nothing is written into the repository)."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(arm_helpers.REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    wheels = sorted(out.glob("edgekit_anomaly-*.whl"))
    assert done.returncode == 0 and len(wheels) == 1, f"pip wheel failed:\n{done.stderr[-3000:]}"
    return wheels[0]


@pytest.fixture(scope="module")
def pi_venv(tmp_path_factory) -> PiVenv:
    work = tmp_path_factory.mktemp("arm-device")
    if not arm_helpers.MKVENV_SCRIPT.is_file():
        arm_helpers.unavailable(f"{arm_helpers.MKVENV_SCRIPT} is missing")
    arm_helpers.ensure_emulator_with_pip(ARM_ROOT, setup_script=arm_helpers.SETUP_SCRIPT, log_dir=work)
    wheel = build_wheel(work / "dist")
    venv, install = arm_helpers.ensure_device_venv(ARM_ROOT, wheel, extras=EXTRAS)
    return PiVenv(venv, wheel, install)


@pytest.fixture(scope="module")
def rpi4_bundle(exported) -> Path:
    """The session's PatchCore run exported for rpi4 with the target's defaults (TFLite fp32)."""
    return exported("rpi4")


def write_video(frames: list[Path], path: Path, *, fourcc: str = "FFV1", fps: float = 5.0) -> Path:
    """An .avi of ``frames`` (same size) written with OpenCV's VideoWriter.

    FFV1 (lossless) by default, so that the Pi and the host decode the very same pixels. With MJPG
    they do not: OpenCV 5.0.0.93's FFmpeg gives 1-2 grey levels different RGB on aarch64 for ~62 %
    of the pixels, which moved raw scores by up to 1.3 %; and JPEG itself lifts these PNG-trained
    normals over the threshold (raw ~30 -> 35-39, threshold 31.5), so every frame is "anomalous".
    """
    import cv2

    images = [cv2.imread(str(frame), cv2.IMREAD_COLOR) for frame in frames]
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} .avi here"
    for image in images:
        writer.write(image)
    writer.release()
    return path


def decode_rgb(video: Path) -> list[np.ndarray]:
    """Every frame of ``video`` as OpenCV decodes it, converted from its BGR to RGB."""
    import cv2

    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def profile_subset(brick: Path, out: Path) -> Path:
    """An MVTec-layout copy of ``brick`` with a few normals and the first image of each defect kind."""
    import shutil

    shutil.copytree(brick / "train", out / "train")
    (out / "test" / "good").mkdir(parents=True)
    for image in sorted((brick / "test" / "good").glob("*.png"))[:PROFILE_NORMALS]:
        shutil.copy2(image, out / "test" / "good" / image.name)
    for kind in sorted(p.name for p in (brick / "test").iterdir() if p.name != "good"):
        (out / "test" / kind).mkdir()
        (out / "ground_truth" / kind).mkdir(parents=True)
        shutil.copy2(brick / "test" / kind / "000.png", out / "test" / kind / "000.png")
        shutil.copy2(brick / "ground_truth" / kind / "000_mask.png", out / "ground_truth" / kind / "000_mask.png")
    return out


def test_wheel_installs_for_a_pi_user_and_its_console_script_runs(pi_venv, tmp_path, record_property):
    import edgekit

    record_property("install", {k: v for k, v in pi_venv.install.items() if k != "installed"})
    done = pi_venv.edgekit("--version", cwd=tmp_path, timeout=600)
    assert done.stdout.strip() == f"edgekit, version {edgekit.__version__}"
    probe = (
        "import json, platform, importlib.util as u, cv2, ai_edge_litert.interpreter, edgekit; "
        "print(json.dumps({'machine': platform.machine(), 'edgekit': edgekit.__file__, "
        "'cv2': cv2.__version__, 'torch': u.find_spec('torch') is not None}))"
    )
    found = subprocess.run(
        [str(pi_venv.path / "bin" / "python"), "-c", probe],
        capture_output=True,
        text=True,
        env=arm_helpers.venv_env(CPU),
        cwd=str(tmp_path),
        timeout=600,
    )
    assert found.returncode == 0, found.stderr[-3000:]
    device = json.loads(found.stdout.strip().splitlines()[-1])
    assert device["machine"] == "aarch64"
    assert Path(device["edgekit"]).is_relative_to(pi_venv.path), "edgekit must come from the installed wheel"
    assert not device["torch"]
    installed = {re.split(r"\s*(?:==|@)\s*", line)[0].lower() for line in pi_venv.install["installed"]}
    assert {"edgekit-anomaly", "ai-edge-litert", "opencv-python-headless", "numpy", "pillow"} <= installed
    assert not installed & {"torch", "onnxruntime", "openvino", "tflite-runtime"}, "only the extras asked for"


def test_printed_systemd_unit_starts_this_venvs_edgekit(pi_venv, tmp_path):
    # The README's second command, as a Pi user types it: the venv not activated, and another
    # `edgekit` earlier on PATH (an old install, a shim) that the unit must not pick up.
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "edgekit").write_text("#!/bin/sh\nexit 1\n")
    (decoy / "edgekit").chmod(0o755)
    bundle = tmp_path / "brick.rpi4"  # the unit is only printed: the bundle is not opened
    bundle.mkdir()
    done = subprocess.run(
        [
            str(pi_venv.path / "bin" / "edgekit"),
            "run",
            "brick.rpi4",
            "--source",
            "0",
            "--events",
            "events.jsonl",
            "--print-systemd-unit",
            "--user",
            "pi",
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=600,
        env=arm_helpers.venv_env(CPU, PATH=f"{decoy}:{os.environ.get('PATH', '/usr/bin:/bin')}"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    service = parse_unit(done.stdout)["Service"]
    program, *arguments = systemd_words(service["ExecStart"])
    assert program == str(pi_venv.path / "bin" / "edgekit")
    assert arguments[:4] == ["run", str(bundle), "--source", "0"]  # paths made absolute
    assert Path(service["WorkingDirectory"], arguments[arguments.index("--events") + 1]) == tmp_path / "events.jsonl"
    assert service["User"] == "pi"


def test_run_on_a_video_flags_the_frames_that_predict_flags_on_the_host(
    pi_venv, rpi4_bundle, brick, tmp_path, record_property
):
    import edgekit

    video = write_video([brick / "test" / name for name in VIDEO_FRAMES], tmp_path / "line.avi")
    events, saved = tmp_path / "events.jsonl", tmp_path / "anomalies"
    pi_venv.edgekit(
        "run",
        str(rpi4_bundle),
        "--source",
        str(video),
        "--events",
        str(events),
        "--max-frames",
        str(MAX_FRAMES),
        "--save-anomalies",
        str(saved),
        cwd=tmp_path,
    )
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    assert [row["frame"] for row in rows] == list(range(MAX_FRAMES)), "every frame of a file, in order, then stop"
    assert {row["source"] for row in rows} == {str(video)}

    detector = edgekit.load(rpi4_bundle)  # the host: x86 OpenCV decodes, x86 LiteRT scores
    frames = decode_rgb(video)
    assert len(frames) == len(VIDEO_FRAMES)
    for name, frame in zip(VIDEO_FRAMES, frames):  # lossless: the video holds the test images themselves
        with Image.open(brick / "test" / name) as image:
            assert np.array_equal(frame, np.asarray(image.convert("RGB"))), name
    host = [detector.predict(frame) for frame in frames[:MAX_FRAMES]]
    assert {row["bundle"] for row in rows} == {detector.fingerprint}
    arm_raw, host_raw = np.array([row["raw_score"] for row in rows]), np.array([p.raw_score for p in host])
    relative = np.abs(arm_raw - host_raw) / np.abs(host_raw)
    record_property(
        "arm_vs_x86_raw_scores",
        {"arm": arm_raw.tolist(), "x86": host_raw.tolist(), "largest_relative": float(relative.max())},
    )
    tolerance = TOLERANCE[("tflite", "fp32")]
    assert relative.max() <= tolerance, f"arm {arm_raw.tolist()} vs x86 {host_raw.tolist()}: {relative.max():.3g}"
    assert [row["is_anomalous"] for row in rows] == [p.is_anomalous for p in host]
    assert [i for i, p in enumerate(host) if p.is_anomalous] == DEFECT_FRAMES  # the video holds what we think

    # the frames the Pi saved (lossless PNG) are what its aarch64 OpenCV decoded: the host's pixels
    saved_frames = {int(re.search(r"_f(\d+)\.png$", path.name).group(1)): path for path in saved.glob("*.png")}
    assert sorted(saved_frames) == DEFECT_FRAMES
    for index, path in saved_frames.items():
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        assert np.array_equal(pixels, frames[index]), f"frame {index} decoded differently on the Pi"


def test_profile_rpi4_through_the_console_script_gives_the_host_auroc(pi_venv, rpi4_bundle, brick, tmp_path):
    import edgekit
    from edgekit.data.datasets import open_dataset
    from edgekit.profile.measure import measure_accuracy

    data = profile_subset(brick, tmp_path / "brick")
    out = tmp_path / "profile"
    pi_venv.edgekit(
        "profile",
        str(rpi4_bundle),
        "--target",
        "rpi4",
        "--data",
        str(data),
        "--runs",
        "2",
        "--warmup",
        "1",
        "--cold-starts",
        "1",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    profile = json.loads((out / "profile.json").read_text())
    # the host check passed: the emulated /proc/cpuinfo is a Cortex-A72 (CPU part 0xd08), i.e. rpi4
    assert profile["host_is_target"] is True and not profile["estimate"]
    assert profile["device"]["machine"] == "aarch64" and profile["device"]["cpu"].startswith("Raspberry Pi 4")
    (variant,) = profile["variants"]
    assert not variant["estimate"], "on the (emulated) Pi it measures, never estimates"
    host = measure_accuracy(edgekit.load(rpi4_bundle), open_dataset(data))
    device = variant["accuracy"]
    assert device["test_images"] == host["test_images"] == PROFILE_NORMALS + 4
    assert device["image_auroc"] == host["image_auroc"]
    assert device["f1_at_threshold"] == host["f1_at_threshold"]
    assert device["pixel_auroc"] == pytest.approx(host["pixel_auroc"], abs=1e-4)


def test_fit_on_the_pi_gives_the_host_s_bank_and_records_its_runtime(pi_venv, rpi4_bundle, brick, tmp_path):
    """`edgekit fit` through the console script on the emulated Pi and on this host, the same 40
    normals into the same TFLite fp32 bundle: the same bank rows in the same order, the same scores
    (benchmarks/fit_parity.py measures it for more pairs), and each manifest names its machine."""
    import edgekit
    from edgekit.bundle import load_bundle
    from edgekit.fit import fit_bundle
    from edgekit.runtime.bank import decode_bank

    normals = tmp_path / "normals"
    normals.mkdir()
    for path in sorted((brick / "train" / "good").iterdir())[:40]:
        shutil.copyfile(path, normals / path.name)
    pi_venv.edgekit("fit", str(rpi4_bundle), "--normals", str(normals), "--out", str(tmp_path / "pi"), cwd=tmp_path)
    fit_bundle(rpi4_bundle, normals, out=tmp_path / "host")
    on_pi, on_host = load_bundle(tmp_path / "pi"), load_bundle(tmp_path / "host")
    banks = [decode_bank({n: b.array(n) for n in b.manifest.head.arrays}, "int8") for b in (on_pi, on_host)]
    step = float(on_host.array("bank_scale").max())  # the int8 bank's step: its float offsets differ by ~1e-5
    assert banks[0].shape == banks[1].shape
    np.testing.assert_allclose(banks[0], banks[1], rtol=0, atol=step)  # the same rows, in the same order
    assert on_pi.manifest.decision.fitted_with["machine"] == "aarch64"
    assert on_host.manifest.decision.fitted_with["machine"] == "x86_64"
    assert on_pi.manifest.decision.image_threshold == pytest.approx(on_host.manifest.decision.image_threshold, rel=1e-5)
    test = [s for s in sorted((brick / "test" / "scratch").iterdir())[:3]]
    with warnings.catch_warnings():  # a different LiteRT version on the Pi would say so here
        warnings.simplefilter("ignore")
        pi_scores = edgekit.load(tmp_path / "pi").raw(test)[0]
    np.testing.assert_allclose(pi_scores, edgekit.load(tmp_path / "host").raw(test)[0], rtol=1e-5)
