"""Input checks on a real exported bundle: the Detector refuses degenerate images and accepts unit floats."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgekit.errors import EdgekitError


def test_detector_refuses_degenerate_images_and_accepts_unit_floats(x86_bundle, brick):
    import edgekit

    detector = edgekit.load(x86_bundle)
    for bad in (np.zeros((0, 0), np.uint8), np.full((1, 1), 128, np.uint8)):
        with pytest.raises(EdgekitError, match="too small"):
            detector.predict(bad)
    good = np.asarray(Image.open(sorted((brick / "test" / "good").iterdir())[0]).convert("RGB"))
    assert detector.predict(good.astype(np.float32) / 255).raw_score == pytest.approx(
        detector.predict(good).raw_score, rel=1e-6
    )
    small = edgekit.load(x86_bundle, max_pixels=1000)
    with pytest.raises(EdgekitError, match="the limit is 0.001 megapixels"):
        small.predict(sorted((brick / "test" / "good").iterdir())[0])
