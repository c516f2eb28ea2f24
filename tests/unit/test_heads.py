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
