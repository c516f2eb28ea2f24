"""tests/unit needs only the device install: numpy, Pillow, click, threadpoolctl and one runtime (plus the
dev extra: pytest, hypothesis, scikit-learn). test_unit_is_device_only.py runs this folder alone with
EDGEKIT_UNIT_ONLY set to a file name; at the end of that run the host-only modules that got imported are
written there, and the run fails if there are any."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

#: The training install (torch, anomalib, NNCF, OpenVINO's model converter, scikit-image's photos) and
#: edgekit's host-only packages.
HOST_ONLY = (
    "torch",
    "torchvision",
    "timm",
    "anomalib",
    "nncf",
    "openvino.tools",
    "skimage",
    "edgekit.train",
    "edgekit.export",
)


def host_only_modules() -> list[str]:
    return sorted(
        name for name in list(sys.modules) if any(name == top or name.startswith(top + ".") for top in HOST_ONLY)
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    report = os.environ.get("EDGEKIT_UNIT_ONLY")
    if not report:
        return  # a run with tests/e2e in it imports torch, rightly
    loaded = host_only_modules()
    Path(report).write_text(json.dumps(loaded))
    if loaded:
        roots = [name for name in loaded if name.rpartition(".")[0] not in loaded]
        print(f"\ntests/unit imported host-only modules: {', '.join(roots)}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
