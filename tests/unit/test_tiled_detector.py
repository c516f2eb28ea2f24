"""A tiled bundle on the device: the Detector cuts the fitted image into the manifest's grid, runs one
row of tiles per network call and stitches the head's maps, so its scores are those of each tile
scored on its own (fake runtime, kNN head; no training stack)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fake_bundles import save_knn

import edgekit
from edgekit.preprocess import InputSpec, fit_to, prepare

TILE = InputSpec(height=16, width=16, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
TILED = replace(TILE, tiles=(2, 3), tile_overlap=4)  # a 28 x 40 grid
POOL = 4


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    normals = [rng.integers(90, 160, (56, 80, 3), dtype=np.uint8) for _ in range(4)]
    outputs = prepare(normals, TILED)  # the grid's tiles, as training sees them
    pooled = outputs.reshape(len(outputs), 3, 4, POOL, 4, POOL).mean(axis=(3, 5))
    bank = np.ascontiguousarray(pooled.transpose(0, 2, 3, 1).reshape(-1, 3), dtype=np.float32)
    folder = tmp_path_factory.mktemp("tiled")
    return {
        "tiled": save_knn(folder / "tiled", bank, spec=TILED, pool=POOL),
        "tile": save_knn(folder / "tile", bank, spec=TILE, pool=POOL),
    }


def test_a_tiled_detector_scores_each_tile_and_stitches_the_maps(bundles):
    image = np.random.default_rng(1).integers(90, 160, (56, 80, 3), dtype=np.uint8)
    image[30:40, 60:70] = (255, 0, 0)  # in the lower right tile only
    tiles = [
        fit_to(image, TILED)[top : top + 16, left : left + 16] for top, left in TILED.tile_origins()
    ]  # each scored by the untiled bundle on its own
    with edgekit.load(bundles["tile"]) as single, edgekit.load(bundles["tiled"]) as tiled:
        tile_scores, tile_maps = single.raw(tiles)
        score, stitched = tiled.raw([image])
        prediction = tiled.predict(image)
        calls_before = tiled.backend.calls
        tiled.raw([image, image])
        calls = tiled.backend.calls - calls_before
    assert score[0] == pytest.approx(tile_scores.max()) and int(np.argmax(tile_scores)) == 5
    assert stitched.shape == (1, 28, 40) and prediction.anomaly_map.shape == (28, 40)
    for (top, left), tile_map in zip(TILED.tile_origins(), tile_maps):
        window = stitched[0, top : top + 16, left : left + 16]
        assert (window >= tile_map - 1e-6).all()  # the largest of the tiles covering a pixel
    np.testing.assert_allclose(stitched[0, 16:, 28:], tile_maps[5][4:, 4:], rtol=1e-6)  # only tile 5 covers it
    assert calls == 4  # two images, one call per row of three tiles
