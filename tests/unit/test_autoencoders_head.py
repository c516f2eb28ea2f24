"""The map head of the autoencoders (and the other map families), in numpy: score rules, registry, cost."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from edgekit.runtime.heads import HEADS, MapHead, build_head

# -- the map head (numpy only) ----------------------------------------------------------------------


def test_map_head_score_rules_read_the_map_as_documented():
    maps = np.zeros((2, 1, 10, 10), np.float32)
    maps[0, 0, 0, :5] = [5, 4, 3, 2, 1]  # 100 pixels: top 1 % is the single largest
    maps[1, 0] = 0.5
    for rule, expected in (("max", [5.0, 0.5]), ("mean", [0.15, 0.5]), ("top_mean", [5.0, 0.5])):
        scores, out = MapHead(10, 10, score=rule)(maps)
        np.testing.assert_allclose(scores, expected, rtol=1e-12)
        np.testing.assert_array_equal(out, maps[:, 0])  # same size, no blur: the map as it is
    scores, _ = MapHead(10, 10, score="top_mean", top_fraction=0.04)(maps)
    np.testing.assert_allclose(scores, [3.5, 0.5], rtol=1e-12)  # mean of 5, 4, 3, 2


def test_map_head_is_registered_and_refuses_bad_params_and_outputs():
    assert HEADS["map"] is MapHead
    head = build_head("map", {"score": "mean", "blur_sigma": 4.0}, {}, output_height=16, output_width=16)
    assert (head.score, head.blur_sigma, head.top_fraction) == ("mean", 4.0, 0.01)
    with pytest.raises(EdgekitError, match="score must be one of max, mean, top_mean"):
        MapHead(16, 16, score="median")
    with pytest.raises(EdgekitError, match="top_fraction"):
        MapHead(16, 16, top_fraction=0.0)
    with pytest.raises(EdgekitError, match=r"\(N, 1, h, w\)"):
        head(np.zeros((1, 2, 16, 16), np.float32))


def test_map_head_cost_counts_the_map_products_only_when_there_are_any():
    assert MapHead(128, 128).cost(128, 128) == (128 * 128, 4 * 2 * 128 * 128)
    flops, touched = MapHead(128, 128, blur_sigma=4.0).cost(128, 128)
    assert flops == 128 * 128 + 2 * 2 * 128**3 and touched == 4 * (2 * 128 * 128 + 2 * 128 * 128)
