"""The numpy kNN head against brute force and against anomalib's own PatchCore scoring."""

import numpy as np
import pytest

from edgekit.runtime.heads import KnnHead, nearest_neighbors


def _brute_force(queries, bank):
    full = np.sqrt(((queries[:, None, :].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1))
    return full.min(1), full.argmin(1)


def test_nearest_neighbors_equal_brute_force_also_across_chunks(monkeypatch):
    rng = np.random.default_rng(1)
    bank = rng.standard_normal((300, 24)).astype(np.float32)
    queries = rng.standard_normal((500, 24)).astype(np.float32) * 3 + 10  # large norms: cancellation-prone
    monkeypatch.setattr("edgekit.runtime.bank._CHUNK_ELEMENTS", 300 * 7)  # 7 query rows per chunk
    distances, indices = nearest_neighbors(queries, bank)
    expected_d, expected_i = _brute_force(queries, bank)
    np.testing.assert_array_equal(indices, expected_i)
    np.testing.assert_allclose(distances, expected_d, rtol=1e-12)


def test_one_neighbor_gives_the_largest_patch_distance():
    rng = np.random.default_rng(5)
    bank = rng.standard_normal((50, 8)).astype(np.float32)
    embeddings = rng.standard_normal((2, 8, 4, 4)).astype(np.float32)
    scores, _ = KnnHead(memory_bank=bank, num_neighbors=1, output_height=16, output_width=16)(embeddings)
    patches = embeddings.transpose(0, 2, 3, 1).reshape(2, 16, 8)
    expected = [_brute_force(p, bank)[0].max() for p in patches]
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


def _near_tie_bank_and_queries():
    """Queries exactly between two bank rows up to float32 rounding: float32 rankings disagree here."""
    rng = np.random.default_rng(6)
    bank = rng.standard_normal((200, 32)).astype(np.float32) * 4 + 20
    left, right = bank[:50], bank[50:100]
    queries = ((left.astype(np.float64) + right) / 2 + rng.standard_normal((50, 32)) * 1e-6).astype(np.float32)
    return bank, np.concatenate([queries, rng.standard_normal((300, 32)).astype(np.float32) * 4 + 20])


def test_the_winner_among_float32_candidates_is_picked_in_float64():
    bank, queries = _near_tie_bank_and_queries()
    distances, indices = nearest_neighbors(queries, bank)
    expected_d, expected_i = _brute_force(queries, bank)
    np.testing.assert_allclose(distances, expected_d, rtol=1e-12)
    exact_ties = np.isclose(
        expected_d,
        np.sort(np.sqrt(((queries[:, None].astype(np.float64) - bank) ** 2).sum(-1)), axis=1)[:, 1],
        rtol=0,
        atol=0,
    )
    np.testing.assert_array_equal(indices[~exact_ties], expected_i[~exact_ties])


def test_faiss_search_gives_identical_neighbors_and_scores():
    pytest.importorskip("faiss")
    bank, queries = _near_tie_bank_and_queries()
    ours = nearest_neighbors(queries, bank)
    from edgekit.runtime.bank import FaissSearch

    theirs = nearest_neighbors(queries, bank, search=FaissSearch(bank))
    np.testing.assert_array_equal(theirs[1], ours[1])
    np.testing.assert_array_equal(theirs[0], ours[0])
    embeddings = queries[: 4 * 49].reshape(4, 7, 7, 32).transpose(0, 3, 1, 2).copy()
    numpy_head = KnnHead(memory_bank=bank, num_neighbors=9, output_height=28, output_width=28)
    faiss_head = KnnHead(memory_bank=bank, num_neighbors=9, output_height=28, output_width=28, search="faiss")
    (s1, m1), (s2, m2) = numpy_head(embeddings), faiss_head(embeddings)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(m1, m2)


def test_unknown_search_is_refused():
    from edgekit.errors import EdgekitError

    with pytest.raises(EdgekitError, match="kNN search must be"):
        KnnHead(
            memory_bank=np.ones((3, 2), np.float32), num_neighbors=1, output_height=4, output_width=4, search="annoy"
        )


def test_the_fast_search_gives_exact_scores_and_maps_within_rounding():
    """Image scores equal exact search's where the fast search picks the other row of a near-tie,
    where two patches are equally worst and where all distances are 0; maps agree to 1e-6."""
    from edgekit.runtime.bank import nearest_distances

    bank, queries = _near_tie_bank_and_queries()
    head = KnnHead(memory_bank=bank, num_neighbors=9, output_height=28, output_width=28)
    fast_index = nearest_distances(queries[:50], head._bank_t, bank, head._half_sq_norms)[1]
    flipped = queries[:50][fast_index != nearest_neighbors(queries[:50], bank)[1]]
    assert len(flipped) >= 2  # the case this test is about: float32 picks the other row
    embeddings = np.repeat(bank[100:149].T.reshape(1, 32, 7, 7), 5, axis=0)  # every patch on a bank row
    embeddings[0, :, 2, 4], embeddings[1, :, 6, 0] = flipped[0], flipped[1]  # a near-tie is the worst patch
    embeddings[2, :, 3, 3] = embeddings[2, :, 5, 2] = bank[7] + 40.0  # two equally worst patches
    embeddings[3] = queries[:49].T.reshape(32, 7, 7)
    scores, maps = head(embeddings)
    exact = KnnHead(memory_bank=bank, num_neighbors=9, output_height=28, output_width=28, exact=True)
    expected_scores, expected_maps = exact(embeddings)
    np.testing.assert_array_equal(scores, expected_scores)
    np.testing.assert_allclose(maps, expected_maps, rtol=1e-6, atol=1e-6)
    assert scores[4] == 0.0


def test_the_fast_search_never_understates_and_rarely_differs():
    rng = np.random.default_rng(8)
    bank = rng.standard_normal((400, 48)).astype(np.float32) * 3 + 5
    queries = (bank[rng.integers(0, 400, 2000)] + rng.standard_normal((2000, 48)).astype(np.float32)).astype(np.float32)
    head = KnnHead(memory_bank=bank, num_neighbors=3, output_height=8, output_width=8)
    from edgekit.runtime.bank import nearest_distances

    fast, fast_index = nearest_distances(queries, head._bank_t, bank, head._half_sq_norms)
    exact, exact_index = nearest_neighbors(queries, bank)
    assert np.all(fast >= exact)
    np.testing.assert_allclose(fast, exact, rtol=1e-6)
    assert np.mean(fast_index == exact_index) > 0.999
