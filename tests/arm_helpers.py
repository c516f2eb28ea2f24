"""Run edgekit's device runtime under an emulated Raspberry Pi (aarch64) Python and compare with x86.

The emulated Python comes from ``../shared/aarch64/setup.sh`` (QEMU user mode, aarch64 CPython 3.11
with aarch64 wheels of numpy, Pillow, onnxruntime and ai-edge-litert; no torch, no click, no scipy).

Both sides score bundles with the same :func:`score_bundle`, so the only thing that differs is the
machine: x86 builds of the runtimes in the test process, aarch64 builds under QEMU in a child process.
This file is also the device-side script (``pyarm arm_helpers.py REQUEST_JSON``): at module level it
imports only the standard library, so it proves what ``edgekit.load`` itself pulls in.
Emulated timings mean nothing (150-400x slower than a Pi) and are never measured here.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUP_SCRIPT = REPO_ROOT.parent / "shared" / "aarch64" / "setup.sh"
DEFAULT_ARM_ROOT = Path("/opt/edgekit-aarch64")
#: what the emulated Python must import for these tests (the device dependencies and nothing else)
DEVICE_MODULES = ("numpy", "PIL", "onnxruntime", "ai_edge_litert.interpreter")
#: third-party top-level modules a prediction may leave in sys.modules, per runtime; the runtime's
#: own dependencies are listed with it (ai-edge-litert's interpreter is a pure pybind module today)
ALLOWED_MODULES = {
    "onnxruntime": {"edgekit", "numpy", "PIL", "onnxruntime"},
    "litert": {"edgekit", "numpy", "PIL", "ai_edge_litert"},
}
#: host-only packages that must never be imported by the device path
HOST_ONLY = (
    "torch",
    "torchvision",
    "anomalib",
    "timm",
    "nncf",
    "onnx",
    "openvino",
    "click",
    "scipy",
    "sklearn",
    "skimage",
    "safetensors",
    "tensorflow",
    "litert_torch",
    "ai_edge_quantizer",
    "cv2",
)
GRID = 8  # anomaly maps are compared as GRID x GRID block means plus min / max / mean


# --------------------------------------------------------------------------------------------------
# both sides


def score_bundle(bundle: str | Path, images: Sequence[str | Path]) -> dict[str, Any]:
    """Load ``bundle`` once with ``edgekit.load`` and score ``images`` in one batch.

    Returns raw image scores (what AUROC and thresholds are computed on), the decisions, and a
    summary of each raw anomaly map: min, max, mean and its GRID x GRID block means.
    """
    import numpy as np

    import edgekit

    detector = edgekit.load(bundle)
    raw_scores, raw_maps = detector.raw([str(p) for p in images])
    predictions = detector.decide(raw_scores, raw_maps)
    maps = np.asarray(raw_maps, dtype=np.float64)
    n, height, width = maps.shape
    blocks = maps[:, : height - height % GRID, : width - width % GRID]
    blocks = blocks.reshape(n, GRID, height // GRID, GRID, width // GRID).mean(axis=(2, 4))
    return {
        "runtime": detector.manifest.runtime,
        "backend": detector.backend.name,
        "runtime_version": str(detector.backend.version),
        "target": detector.manifest.target,
        "precision": detector.manifest.precision,
        "raw_scores": [float(s) for s in raw_scores],
        "scores": [p.score for p in predictions],
        "labels": [p.is_anomalous for p in predictions],
        "map_shape": [height, width],
        "map_min": maps.min(axis=(1, 2)).tolist(),
        "map_max": maps.max(axis=(1, 2)).tolist(),
        "map_mean": maps.mean(axis=(1, 2)).tolist(),
        "map_blocks": blocks.reshape(n, -1).tolist(),
    }


# --------------------------------------------------------------------------------------------------
# device side (runs under the emulated aarch64 Python)


_INTERPRETER_HOOKS = {"__main__", "sitecustomize", "usercustomize"}  # Debian's python loads sitecustomize


def _third_party_modules() -> list[str]:
    """Top-level names of loaded modules that do not come from the standard library."""
    stdlib = {str(Path(sysconfig.get_paths()[key]).resolve()) for key in ("stdlib", "platstdlib")}
    found = set()
    for name, module in list(sys.modules.items()):
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top in found or top in _INTERPRETER_HOOKS:
            continue
        location = getattr(module, "__file__", None)
        if location is None:  # namespace packages and builtins: judge by name
            if top not in sys.builtin_module_names:
                found.add(top)
            continue
        resolved = str(Path(location).resolve())
        if not any(resolved.startswith(root + os.sep) for root in stdlib):
            found.add(top)
    return sorted(found)


def _cpuinfo() -> dict[str, str]:
    """The CPU the device reports (QEMU serves the fake Raspberry Pi /proc/cpuinfo from the sysroot)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() in ("CPU part", "Features", "Model"):
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def device_main(request: dict[str, Any]) -> dict[str, Any]:
    """Score each bundle of ``request`` on ``request["images"]`` and describe the machine."""
    cpuinfo = _cpuinfo()  # before any runtime is imported: it is what their kernel choice saw
    results = {str(bundle): score_bundle(bundle, request["images"]) for bundle in request["bundles"]}
    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpuinfo": cpuinfo,
        "third_party_modules": _third_party_modules(),
        "host_only_loaded": sorted(name for name in HOST_ONLY if name in sys.modules),
        "results": results,
    }


# --------------------------------------------------------------------------------------------------
# host side


#: distributions whose aarch64 build must match the host's version, so only the machine differs
PINNED_DISTRIBUTIONS = ("numpy", "pillow", "onnxruntime", "ai-edge-litert")


def unavailable(reason: str) -> None:
    """No emulator: fail in CI (a CI that silently skips the ARM proof is worse than a red one), else skip."""
    import pytest

    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"ARM parity cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"ARM parity needs the emulated aarch64 Python: {reason}")


def host_versions() -> dict[str, str]:
    """Installed host versions of :data:`PINNED_DISTRIBUTIONS` (those that are installed)."""
    from importlib import metadata

    found = {}
    for name in PINNED_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def emulator_versions(pyarm: Path) -> dict[str, str] | None:
    """Versions of :data:`PINNED_DISTRIBUTIONS` under ``pyarm``, or None unless it imports every device module."""
    if not pyarm.is_file():
        return None
    probe = "; ".join(f"import {name}" for name in DEVICE_MODULES) + (
        "; import json; from importlib import metadata; "
        f"print(json.dumps({{n: metadata.version(n) for n in {list(PINNED_DISTRIBUTIONS)!r}}}))"
    )
    try:
        done = subprocess.run(
            [str(pyarm), "-c", probe], capture_output=True, text=True, timeout=300, env=_device_env("a72")
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_emulator(arm_root: Path, pins: dict[str, str], *, setup_script: Path, log: Path) -> tuple[bool, str]:
    """Run setup.sh with Pillow and the host's versions pinned; returns (ok, last lines of its log)."""
    extra = ["pillow", *(f"{name}=={version}" for name, version in sorted(pins.items()))]
    with open(log, "wb") as handle:
        try:
            done = subprocess.run(
                ["bash", str(setup_script), *extra],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**os.environ, "ARM_ROOT": str(arm_root)},
                timeout=1800,
            )
            code = done.returncode
        except subprocess.TimeoutExpired:
            code = -1
    tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    return code == 0, tail


def ensure_emulator(arm_root: Path, *, setup_script: Path, log_dir: Path) -> Path:
    """``arm_root/pyarm``, working and with the host's versions of the device packages.

    Reused when it already imports every device module at those versions; otherwise (re)built by
    ``setup_script``, pinned to the host's versions (unpinned if such a wheel does not exist for
    aarch64). When that cannot happen: :func:`unavailable` (fail in CI, skip elsewhere).
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        unavailable(f"the host must be x86-64 to compare with ARM, this one is {platform.machine()}")
    pyarm = arm_root / "pyarm"
    pins = host_versions()
    try:
        arm_root.parent.mkdir(parents=True, exist_ok=True)
        lock = open(arm_root.parent / f".{arm_root.name}.lock", "w")
    except OSError as exc:
        unavailable(f"cannot use {arm_root} ({exc.strerror})")
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions must not rebuild it under each other
        found = emulator_versions(pyarm)
        if found is not None and all(found.get(name) == version for name, version in pins.items()):
            return pyarm
        if not setup_script.is_file():
            if found is not None:  # usable, though its versions differ from the host's
                return pyarm
            unavailable(f"{setup_script} is missing and {pyarm} does not work")
        _, tail = build_emulator(arm_root, pins, setup_script=setup_script, log=log_dir / "setup-pinned.log")
        if emulator_versions(pyarm) is None and pins:  # a host version without an aarch64 wheel
            _, tail = build_emulator(arm_root, {}, setup_script=setup_script, log=log_dir / "setup-latest.log")
        if emulator_versions(pyarm) is None:
            unavailable(f"{setup_script} did not produce a working {pyarm}: {tail}")
    return pyarm


def _device_env(cpu: str) -> dict[str, str]:
    # Only the repo on the path: the device side must find edgekit from source and nothing of the host.
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "ARM_CPU": cpu,
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LC_ALL": "C.UTF-8",
    }


def run_on_arm(
    pyarm: Path, *, cpu: str, bundles: Sequence[Path], images: Sequence[Path], timeout: float = 600
) -> dict[str, Any]:
    """Score ``bundles`` under the emulated aarch64 Python (``cpu``: a72 = Pi 4, a76 = Pi 5)."""
    request = json.dumps({"bundles": [str(b) for b in bundles], "images": [str(p) for p in images]})
    done = subprocess.run(
        [str(pyarm), str(Path(__file__).resolve()), request],
        capture_output=True,
        text=True,
        env=_device_env(cpu),
        cwd=str(REPO_ROOT / "tests"),
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"emulated aarch64 run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# a device install: the built wheel in an emulated Pi venv, installed by that venv's own pip


MKVENV_SCRIPT = SETUP_SCRIPT.with_name("mkvenv.sh")


def _emulator_lock(arm_root: Path):
    """The lock :func:`ensure_emulator` takes, so parallel sessions never rebuild under each other."""
    try:
        arm_root.parent.mkdir(parents=True, exist_ok=True)
        return open(arm_root.parent / f".{arm_root.name}.lock", "w")
    except OSError as exc:
        unavailable(f"cannot use {arm_root} ({exc.strerror})")


def ensure_emulator_with_pip(arm_root: Path, *, setup_script: Path, log_dir: Path) -> Path:
    """:func:`ensure_emulator`, plus aarch64 pip in ``arm_root/site-aarch64`` (what mkvenv.sh needs).

    When pip is missing, setup.sh runs again with the device packages pinned as before and pip
    pinned to the host's version (pip is pure Python: any version installs).
    """
    from importlib import metadata

    pyarm = ensure_emulator(arm_root, setup_script=setup_script, log_dir=log_dir)
    has_pip = lambda: (arm_root / "site-aarch64" / "pip").is_dir()  # noqa: E731
    if has_pip():
        return pyarm
    pip_pin = {"pip": metadata.version("pip")}
    with _emulator_lock(arm_root) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not has_pip():
            _, tail = build_emulator(
                arm_root, {**host_versions(), **pip_pin}, setup_script=setup_script, log=log_dir / "setup-pip.log"
            )
            if emulator_versions(pyarm) is None or not has_pip():
                _, tail = build_emulator(
                    arm_root, pip_pin, setup_script=setup_script, log=log_dir / "setup-pip-latest.log"
                )
            if emulator_versions(pyarm) is None or not has_pip():
                unavailable(f"{setup_script} gave no aarch64 pip in {arm_root / 'site-aarch64'}: {tail}")
    return pyarm


def venv_env(cpu: str = "a72", **extra: str) -> dict[str, str]:
    """Environment for commands in an emulated Pi venv: nothing of the host's Python or pip settings.

    pip reads no configuration file, so it installs from PyPI alone, as on a fresh Pi; only the
    host's CA bundle is passed on (this network may inspect TLS with its own certificate).
    """
    certificates = {
        name: os.environ[name] for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE") if os.environ.get(name)
    }
    return {
        **certificates,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "ARM_CPU": cpu,
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LC_ALL": "C.UTF-8",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "PIP_DEFAULT_TIMEOUT": "180",
        **extra,
    }


def wheel_requirements(wheel: Path) -> list[str]:
    """The ``Requires-Dist`` lines of a wheel's METADATA (what pip will install with it)."""
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(name).decode().splitlines()
    return sorted(line.partition(":")[2].strip() for line in lines if line.startswith("Requires-Dist:"))


def _run_logged(command: list[str], *, env: dict[str, str], log: Path, timeout: float) -> float:
    """Run ``command`` with its output appended to ``log``; seconds taken; AssertionError on failure."""
    started = time.perf_counter()
    with open(log, "ab") as handle:
        handle.write(("$ " + " ".join(command) + "\n").encode())
        handle.flush()
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-15:])
        raise AssertionError(f"{' '.join(command)} failed (exit {done.returncode}):\n{tail}")
    return time.perf_counter() - started


def ensure_device_venv(
    arm_root: Path, wheel: Path, *, extras: Sequence[str], mkvenv_script: Path = MKVENV_SCRIPT, timeout: float = 3600
) -> tuple[Path, dict[str, Any]]:
    """An emulated Pi venv with ``wheel[extras]`` installed by the venv's own pip from PyPI.

    Cached under ``arm_root/venvs``, keyed by the wheel's requirements and ``extras``, like the
    emulator itself: the first session makes the venv with mkvenv.sh and runs
    ``pip install "<wheel>[extras]"`` as a Pi user would (timed under emulation, so not what a Pi
    takes; recorded in ``install.json`` with ``pip freeze``);
    later sessions re-install only the edgekit wheel (``--no-deps --force-reinstall``), so the
    code under test is always this wheel's. Returns the venv and what ``install.json`` holds.
    """
    requirement = f"{wheel.resolve()}[{','.join(extras)}]"
    key = hashlib.sha256(json.dumps([wheel_requirements(wheel), sorted(extras)]).encode()).hexdigest()[:12]
    venv = arm_root / "venvs" / f"pi-{key}"
    record = venv / "install.json"
    env = venv_env()
    with _emulator_lock(arm_root) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.is_file():  # absent or half made: (re)build it where it will live (its scripts hold the path)
            shutil.rmtree(venv, ignore_errors=True)
            venv.mkdir(parents=True)
            log = venv / "install.log"
            made = _run_logged(
                ["sh", str(mkvenv_script), str(venv)], env={**env, "ARM_ROOT": str(arm_root)}, log=log, timeout=timeout
            )
            # no cache, as on a fresh Pi (the host's pip shares this HOME's cache)
            seconds = _run_logged(
                [str(venv / "bin" / "pip"), "install", "--no-cache-dir", requirement], env=env, log=log, timeout=timeout
            )
            frozen = subprocess.run(
                [str(venv / "bin" / "pip"), "freeze"], capture_output=True, text=True, env=env, timeout=timeout
            ).stdout.splitlines()
            info = {
                "mkvenv_s": round(made, 1),
                "pip_install_s": round(seconds, 1),
                "requirement": requirement,
                "wheel_bytes": wheel.stat().st_size,
                "installed": frozen,
            }
            tmp = record.with_suffix(".tmp")
            tmp.write_text(json.dumps(info, indent=1))
            tmp.replace(record)
            return venv, {**info, "cached": False}
        info = json.loads(record.read_text())
        seconds = _run_logged(
            [str(venv / "bin" / "pip"), "install", "--no-deps", "--force-reinstall", str(wheel)],
            env=env,
            log=venv / "install.log",
            timeout=timeout,
        )
        return venv, {**info, "cached": True, "reinstall_s": round(seconds, 1)}


if __name__ == "__main__":
    print(json.dumps(device_main(json.loads(sys.argv[1]))))
