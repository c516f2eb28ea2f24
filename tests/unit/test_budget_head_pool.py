"""The head pool of the thread budget: serial results for every head, work spread and errors re-raised."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest


def test_head_pool_gives_the_serial_results_for_every_head():
    from edgekit.runtime.heads import KnnHead, MahalanobisHead, MapHead
    from edgekit.runtime.threads import HeadPool

    rng = np.random.default_rng(0)
    pool = HeadPool(3)
    knn = KnnHead(memory_bank=rng.normal(size=(300, 16)).astype(np.float32), num_neighbors=3,
                  output_height=32, output_width=32)
    embeddings = rng.normal(size=(2, 16, 16, 16)).astype(np.float32)
    for head, inputs in ((knn, embeddings),
                         (MahalanobisHead(mean=rng.normal(size=(256, 16)),
                                          inv_covariance=np.tile(np.eye(16), (256, 1, 1)),
                                          output_height=32, output_width=32), embeddings),
                         (MapHead(output_height=32, output_width=32, blur_sigma=2.0),
                          rng.random((3, 1, 16, 16)).astype(np.float32))):
        serial, parallel = head(inputs), head(inputs, pool=pool)
        np.testing.assert_array_equal(parallel[0], serial[0])
        np.testing.assert_array_equal(parallel[1], serial[1])
    pool.close()


def test_head_pool_spreads_work_and_reraises():
    from edgekit.runtime.threads import HeadPool

    pool = HeadPool(2)
    seen = set()

    def work(item: int) -> int:
        seen.add(threading.get_ident())
        time.sleep(0.01)
        return item * item

    assert pool.map(work, list(range(8))) == [k * k for k in range(8)]
    assert len(seen) == 2

    def fail(item: int) -> int:
        if item == 5:
            raise ValueError("five")
        return item

    with pytest.raises(ValueError, match="five"):
        pool.map(fail, list(range(8)))
    pool.close()
