"""Runtime load errors on a real exported bundle: OpenVINO's reason is named."""

from __future__ import annotations

import shutil

import pytest

from edgekit.errors import EdgekitError


def test_openvino_load_error_names_the_real_reason(x86_bundle, tmp_path):
    from edgekit.runtime.backends import BackendOptions, load_backend

    copy = tmp_path / "ir"
    copy.mkdir()
    for name in ("model.xml", "model.bin"):
        shutil.copy(x86_bundle / name, copy / name)
    (copy / "model.bin").write_bytes((copy / "model.bin").read_bytes()[:1000])
    with pytest.raises(EdgekitError, match="model.xml on CPU: Incorrect weights in bin file!$"):
        load_backend("openvino", copy / "model.xml", BackendOptions())
