"""A runtime's error keeps its reason: OpenVINO's source-location lines are skipped."""

from __future__ import annotations

import pytest

from edgekit.errors import reason

OPENVINO_TEXT = (
    "Exception from src/inference/src/cpp/core.cpp:84:\n"
    "Check 'is_valid_weights_range(m_weights_provider->size(), offset, size)' failed at "
    "src/core/xml_util/src/xml_deserialize_util.cpp:900:\nIncorrect weights in bin file!\n\n"
)


@pytest.mark.parametrize(
    "text, expected",
    [
        (OPENVINO_TEXT, "Incorrect weights in bin file!"),
        (
            "[ONNXRuntimeError] : 10 : INVALID_GRAPH : bad model\nmore",
            "[ONNXRuntimeError] : 10 : INVALID_GRAPH : bad model",
        ),
        ("Exception from src/inference/src/cpp/core.cpp:84:\n", "Exception from src/inference/src/cpp/core.cpp:84:"),
        ("", "RuntimeError"),
    ],
)
def test_reason_is_the_line_that_says_what_went_wrong(text, expected):
    assert reason(RuntimeError(text)) == expected


def test_reason_is_capped():
    assert len(reason(RuntimeError("x" * 5000))) == 300
