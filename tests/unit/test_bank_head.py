"""PatchCore's bank storage (float32/float16/int8) and bank budget, in numpy
(the exported bundle's bank: tests/e2e/test_bank.py)."""

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from edgekit.runtime.bank import decode_bank, encode_bank
from edgekit.runtime.heads import KnnHead


@pytest.fixture(scope="module")
def skewed_bank() -> np.ndarray:
    """Non-negative, differently scaled dimensions: what un-projected pooled ReLU6 features look like."""
    rng = np.random.default_rng(0)
    return (np.abs(rng.standard_normal((500, 16))) * np.geomspace(0.05, 6.0, 16) + 0.3).astype(np.float32)


def test_int8_affine_round_trip_error_is_at_most_half_a_step(skewed_bank):
    arrays = encode_bank(skewed_bank, "int8")
    assert arrays["memory_bank"].dtype == np.int8 and arrays["bank_scale"].shape == (16,)
    error = np.abs(decode_bank(arrays, "int8") - skewed_bank)
    step = (skewed_bank.max(0) - skewed_bank.min(0)) / 255
    assert np.all(error <= arrays["bank_scale"] / 2 * (1 + 1e-5) + 1e-7)
    np.testing.assert_allclose(arrays["bank_scale"], step, rtol=1e-6)
    # every level is used: the extremes of each dimension land on -128 and 127
    assert arrays["memory_bank"].min() == -128 and arrays["memory_bank"].max() == 127


def test_affine_int8_halves_the_error_of_symmetric_int8_on_non_negative_features(skewed_bank):
    affine = np.abs(decode_bank(encode_bank(skewed_bank, "int8"), "int8") - skewed_bank).max(0)
    scale = np.abs(skewed_bank).max(0) / 127  # the symmetric alternative, for comparison
    symmetric = np.abs(np.clip(np.rint(skewed_bank / scale), -127, 127) * scale - skewed_bank).max(0)
    assert np.all(affine < 0.75 * symmetric)


def test_float16_round_trip_and_overflow():
    bank = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32) * 3
    arrays = encode_bank(bank, "float16")
    assert arrays["memory_bank"].dtype == np.float16
    np.testing.assert_allclose(decode_bank(arrays, "float16"), bank, rtol=2**-11, atol=1e-7)
    with pytest.raises(EdgekitError, match="do not fit float16"):
        encode_bank(bank * 1e5, "float16")


def test_decoding_refuses_a_bank_that_contradicts_its_manifest(skewed_bank):
    arrays = encode_bank(skewed_bank, "int8")
    with pytest.raises(EdgekitError, match="stored as int8, the manifest says float32"):
        decode_bank(arrays, "float32")
    with pytest.raises(EdgekitError, match="needs its bank_scale and bank_offset"):
        decode_bank({"memory_bank": arrays["memory_bank"]}, "int8")
    with pytest.raises(EdgekitError, match="one value per bank dimension"):
        decode_bank({**arrays, "bank_scale": arrays["bank_scale"][:3]}, "int8")
    with pytest.raises(EdgekitError, match="bank dtype must be one of"):
        encode_bank(skewed_bank, "int4")


def test_head_from_manifest_scores_with_the_dequantized_bank(skewed_bank):
    arrays = encode_bank(skewed_bank, "int8")
    params = {"num_neighbors": 3, "bank": {"dtype": "int8"}}
    head = KnnHead.from_params(params, arrays, output_height=16, output_width=16)
    reference = KnnHead(memory_bank=decode_bank(arrays, "int8"), num_neighbors=3, output_height=16, output_width=16)
    embeddings = np.random.default_rng(2).random((2, 16, 4, 4)).astype(np.float32) * 3
    np.testing.assert_array_equal(head(embeddings)[0], reference(embeddings)[0])
    legacy = KnnHead.from_params({"num_neighbors": 3}, {"memory_bank": skewed_bank}, output_height=16, output_width=16)
    np.testing.assert_array_equal(legacy.memory_bank, skewed_bank)  # bundles without "bank" are float32


def test_share_budget_gives_the_most_rows_that_fit():
    from edgekit.compress.pca import BankSettings

    budget = 4915 * 152 * 4 * 0.05
    rows = BankSettings(dtype="int8", share=0.05).rows(4915, 152, 152)
    assert rows * 152 + 2 * 152 * 4 <= budget < (rows + 1) * 152 + 2 * 152 * 4
    assert BankSettings(dtype="float16", share=0.05).rows(4915, 152, 64) == int(budget // 128)
    assert BankSettings(dtype="int8", share=0.5).rows(100, 8, 8) is None  # everything fits: no thinning
    assert BankSettings(size=7, share=0.05).rows(100, 8, 8) == 7


def test_most_caps_every_rule_and_alone_keeps_smaller_banks_whole():
    from edgekit.compress.pca import BankSettings

    assert BankSettings(dtype="int8", share=0.05, most=500).rows(4915, 152, 152) == 500
    assert BankSettings(dtype="int8", share=0.05, most=5000).rows(4915, 152, 152) == 975  # the share binds
    assert BankSettings(size=800, most=500).rows(4915, 152, 152) == 500
    assert BankSettings(most=500).rows(4915, 152, 152) == 500
    assert BankSettings(most=5000).rows(4915, 152, 152) is None  # every row fits
