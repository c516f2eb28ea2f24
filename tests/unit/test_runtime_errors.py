"""A runtime's error keeps its reason: OpenVINO's source-location lines are skipped."""
from __future__ import annotations

import shutil

import pytest

from edgekit.errors import EdgekitError, reason

OPENVINO_TEXT = ("Exception from src/inference/src/cpp/core.cpp:84:\n"
                 "Check 'is_valid_weights_range(m_weights_provider->size(), offset, size)' failed at "
                 "src/core/xml_util/src/xml_deserialize_util.cpp:900:\nIncorrect weights in bin file!\n\n")


@pytest.mark.parametrize("text, expected", [
    (OPENVINO_TEXT, "Incorrect weights in bin file!"),
    ("[ONNXRuntimeError] : 10 : INVALID_GRAPH : bad model\nmore", "[ONNXRuntimeError] : 10 : INVALID_GRAPH : bad model"),
    ("Exception from src/inference/src/cpp/core.cpp:84:\n", "Exception from src/inference/src/cpp/core.cpp:84:"),
    ("", "RuntimeError"),
])
def test_reason_is_the_line_that_says_what_went_wrong(text, expected):
    assert reason(RuntimeError(text)) == expected


def test_reason_is_capped():
    assert len(reason(RuntimeError("x" * 5000))) == 300


def test_openvino_load_error_names_the_real_reason(x86_bundle, tmp_path):
    from edgekit.runtime.backends import BackendOptions, load_backend

    copy = tmp_path / "ir"
    copy.mkdir()
    for name in ("model.xml", "model.bin"):
        shutil.copy(x86_bundle / name, copy / name)
    (copy / "model.bin").write_bytes((copy / "model.bin").read_bytes()[:1000])
    with pytest.raises(EdgekitError, match="model.xml on CPU: Incorrect weights in bin file!$"):
        load_backend("openvino", copy / "model.xml", BackendOptions())
