"""Bank storage (float32/float16/int8) and the compressed bank of an exported PatchCore bundle."""
import numpy as np
import pytest

from edgekit.compress.pca import DEFAULT_BANK, UNCOMPRESSED
from edgekit.errors import EdgekitError
from edgekit.runtime.heads import KnnHead, decode_bank, encode_bank


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
    np.testing.assert_allclose(decode_bank(arrays, "float16"), bank, rtol=2 ** -11, atol=1e-7)
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


# --- the exported bundle (session fixtures: default export; one more export, uncompressed) -----------------

def _export(run, out, **bank_options):
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run

    export_run(run.path, out, target="x86", options=ExportOptions(**bank_options))
    return out


@pytest.fixture(scope="module")
def uncompressed_bundle(patchcore_run, tmp_path_factory):
    return _export(patchcore_run, tmp_path_factory.mktemp("bank") / "full", bank_dims="full", bank_dtype="float32")


@pytest.fixture(scope="module")
def pca_bundle(patchcore_run, tmp_path_factory):
    return _export(patchcore_run, tmp_path_factory.mktemp("bank") / "pca32", bank_dims="32", bank_dtype="int8")


@pytest.fixture(scope="module")
def sample_images(brick):
    from edgekit.data.datasets import open_dataset

    return [s.path for s in open_dataset(brick).test[::10]]


@pytest.fixture(scope="module")
def torch_embeddings(patchcore_run, sample_images):
    from edgekit.train.patchcore import embed, input_spec_for, load_network

    config = patchcore_run.config
    return embed(load_network(patchcore_run), sample_images, input_spec_for(config["backbone"], config["image_size"]))


def _stored(bundle_path):
    import edgekit

    manifest = edgekit.load(bundle_path).manifest
    return manifest, {name: np.load(bundle_path / path, allow_pickle=False)
                      for name, path in manifest.head.arrays.items()}


def test_default_bank_is_int8_thinned_to_a_twentieth_of_anomalib_s(x86_bundle, patchcore_run):
    manifest, stored = _stored(x86_bundle)
    bank = manifest.head.params["bank"]
    coreset_rows = patchcore_run.config["bank_rows"]
    rows = DEFAULT_BANK.rows(coreset_rows, 152, 152)
    assert (bank["dims"], bank["dtype"], bank["rows"], bank["projection"]) == (152, "int8", rows, "none")
    assert stored["memory_bank"].dtype == np.int8 and stored["memory_bank"].shape == (rows, 152)
    assert bank["reselected_from"] == bank["coreset_rows"] == coreset_rows
    assert bank["bytes"] == sum(array.nbytes for array in stored.values()) == rows * 152 + 2 * 152 * 4
    anomalib_default = coreset_rows * 152 * 4  # 10 % coreset, all dims, float32
    assert anomalib_default / bank["bytes"] >= 20 > anomalib_default / (bank["bytes"] + 152)  # the most rows that fit
    assert bank["smaller_than_uncompressed"] == round(anomalib_default / bank["bytes"], 2)
    assert manifest.export["bank"] == bank


def test_pca_bank_is_described_and_the_network_computes_the_projection(pca_bundle, patchcore_run, torch_embeddings,
                                                                       sample_images):
    import edgekit
    from edgekit.compress.pca import BankSettings
    from edgekit.runtime.fit import embed_images
    from edgekit.train.patchcore import compressed_bank

    manifest, stored = _stored(pca_bundle)
    bank = manifest.head.params["bank"]
    assert (bank["dims"], bank["dtype"], bank["feature_dims"], bank["rows"]) == (32, "int8", 152,
                                                                                 patchcore_run.config["bank_rows"])
    assert bank["pca_fitted_on"] == f"all {patchcore_run.config['patches_seen']} training patches"
    assert 0.5 < bank["explained_variance"] < 1 and bank["bytes"] == bank["rows"] * 32 + 2 * 32 * 4
    assert sorted(stored) == ["bank_offset", "bank_scale", "memory_bank"]
    device = embed_images(edgekit.load(pca_bundle), sample_images)
    expected = compressed_bank(patchcore_run, BankSettings(dims="32", dtype="int8")).pca.project_maps(torch_embeddings)
    assert device.shape == expected.shape == (len(sample_images), 32, 32, 32)
    np.testing.assert_allclose(device, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


def test_full_float32_bank_is_the_run_bank_and_scores_equal_the_uncompressed_computation(
        uncompressed_bundle, patchcore_run, torch_embeddings, sample_images):
    import edgekit
    from edgekit.train.patchcore import head_for

    detector = edgekit.load(uncompressed_bundle)
    bank = detector.manifest.head.params["bank"]
    assert (bank["dims"], bank["dtype"], bank["projection"], bank["smaller_than_uncompressed"]) == \
        (152, "float32", "none", 1.0)
    np.testing.assert_array_equal(detector.bundle.array("memory_bank"), patchcore_run.array("memory_bank"))
    exact = KnnHead(memory_bank=patchcore_run.array("memory_bank"), num_neighbors=9, output_height=256,
                    output_width=256)(torch_embeddings)
    np.testing.assert_array_equal(head_for(patchcore_run)(torch_embeddings)[0], exact[0])
    scores, _ = detector.raw(sample_images)
    np.testing.assert_allclose(scores, exact[0], rtol=1e-4)


def test_bank_size_reselects_rows_in_the_compressed_space(patchcore_run):
    from edgekit.compress.coreset import coreset_indices
    from edgekit.compress.pca import BankSettings
    from edgekit.train.patchcore import compressed_bank

    full = compressed_bank(patchcore_run, BankSettings(dims="16", dtype="float32")).arrays["memory_bank"]
    thinned = compressed_bank(patchcore_run, BankSettings(dims="16", dtype="float32", size=300))
    assert thinned.description["reselected_from"] == patchcore_run.config["bank_rows"] == len(full)
    expected = full[np.sort(coreset_indices(full, 300, seed=patchcore_run.config["seed"]))]
    np.testing.assert_array_equal(thinned.arrays["memory_bank"], expected)


def test_export_options_are_the_default_or_exactly_what_is_given(patchcore_run):
    from edgekit.compress.pca import BankSettings
    from edgekit.export.job import ExportOptions
    from edgekit.export.patchcore import bank_settings

    assert bank_settings(ExportOptions()) == DEFAULT_BANK
    assert bank_settings(ExportOptions(bank_dtype="int8")) == BankSettings(dims="full", dtype="int8")
    assert bank_settings(ExportOptions(bank_dims="full", bank_dtype="float32")) == UNCOMPRESSED
    with pytest.raises(EdgekitError, match="--bank-size must be at least 1"):
        bank_settings(ExportOptions(bank_size=0))
    with pytest.raises(EdgekitError, match="--bank-dtype must be one of"):
        bank_settings(ExportOptions(bank_dtype="int4"))


def test_share_budget_gives_the_most_rows_that_fit():
    from edgekit.compress.pca import BankSettings

    budget = 4915 * 152 * 4 * 0.05
    rows = BankSettings(dtype="int8", share=0.05).rows(4915, 152, 152)
    assert rows * 152 + 2 * 152 * 4 <= budget < (rows + 1) * 152 + 2 * 152 * 4
    assert BankSettings(dtype="float16", share=0.05).rows(4915, 152, 64) == int(budget // 128)
    assert BankSettings(dtype="int8", share=0.5).rows(100, 8, 8) is None  # everything fits: no thinning
    assert BankSettings(size=7, share=0.05).rows(100, 8, 8) == 7
