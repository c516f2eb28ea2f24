"""Bank storage (float32/float16/int8) and the compressed bank of an exported PatchCore bundle."""

import numpy as np
import pytest

from edgekit.compress.pca import DEFAULT_BANK, UNCOMPRESSED
from edgekit.errors import EdgekitError
from edgekit.runtime.heads import KnnHead

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
    from edgekit.families.patchcore.train import load_network
    from edgekit.train.inputs import embed, input_spec_for

    config = patchcore_run.config
    return embed(load_network(patchcore_run), sample_images, input_spec_for(config["backbone"], config["image_size"]))


def _stored(bundle_path):
    import edgekit

    manifest = edgekit.load(bundle_path).manifest
    return manifest, {
        name: np.load(bundle_path / path, allow_pickle=False) for name, path in manifest.head.arrays.items()
    }


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


def test_pca_bank_is_described_and_the_network_computes_the_projection(
    pca_bundle, patchcore_run, torch_embeddings, sample_images
):
    import edgekit
    from edgekit.compress.pca import BankSettings
    from edgekit.families.patchcore.train import compressed_bank
    from edgekit.fit import embed_images

    manifest, stored = _stored(pca_bundle)
    bank = manifest.head.params["bank"]
    assert (bank["dims"], bank["dtype"], bank["feature_dims"], bank["rows"]) == (
        32,
        "int8",
        152,
        patchcore_run.config["bank_rows"],
    )
    assert bank["pca_fitted_on"] == f"all {patchcore_run.config['patches_seen']} training patches"
    assert 0.5 < bank["explained_variance"] < 1 and bank["bytes"] == bank["rows"] * 32 + 2 * 32 * 4
    assert sorted(stored) == ["bank_offset", "bank_scale", "memory_bank"]
    device = embed_images(edgekit.load(pca_bundle), sample_images)
    expected = compressed_bank(patchcore_run, BankSettings(dims="32", dtype="int8")).pca.project_maps(torch_embeddings)
    assert device.shape == expected.shape == (len(sample_images), 32, 32, 32)
    np.testing.assert_allclose(device, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


def test_a_residual_bank_exports_and_scores_as_the_training_path(
    patchcore_run, torch_embeddings, sample_images, tmp_path
):
    import edgekit
    from edgekit.compress.pca import BankSettings
    from edgekit.families.patchcore.train import compressed_bank, head_for

    detector = edgekit.load(_export(patchcore_run, tmp_path / "b", bank_dims="32+r", bank_dtype="float32"))
    bank = detector.manifest.head.params["bank"]
    assert (bank["dims"], bank["feature_dims"]) == (33, 152) and "residual energy" in bank["projection"]
    compressed = compressed_bank(patchcore_run, BankSettings(dims="32+r", dtype="float32"))
    scores, _ = head_for(patchcore_run, compressed)(compressed.pca.project_maps(torch_embeddings))
    np.testing.assert_allclose(detector.raw(sample_images)[0], scores, rtol=1e-3)


def test_a_residual_bank_is_refused_with_an_int8_network(patchcore_run, tmp_path):
    with pytest.raises(EdgekitError, match=r"--bank-dims 32\+r needs an fp32 or fp16 network.*--bank-dims 32 without"):
        _export(patchcore_run, tmp_path / "b", bank_dims="32+r", precision="int8")
    assert not (tmp_path / "b").exists()


def test_full_float32_bank_is_the_run_bank_and_scores_equal_the_uncompressed_computation(
    uncompressed_bundle, patchcore_run, torch_embeddings, sample_images
):
    import edgekit
    from edgekit.families.patchcore.train import head_for

    detector = edgekit.load(uncompressed_bundle)
    bank = detector.manifest.head.params["bank"]
    assert (bank["dims"], bank["dtype"], bank["projection"], bank["smaller_than_uncompressed"]) == (
        152,
        "float32",
        "none",
        1.0,
    )
    np.testing.assert_array_equal(detector.bundle.array("memory_bank"), patchcore_run.array("memory_bank"))
    exact = KnnHead(
        memory_bank=patchcore_run.array("memory_bank"), num_neighbors=9, output_height=256, output_width=256
    )(torch_embeddings)
    np.testing.assert_array_equal(head_for(patchcore_run)(torch_embeddings)[0], exact[0])
    scores, _ = detector.raw(sample_images)
    np.testing.assert_allclose(scores, exact[0], rtol=1e-4)


def test_bank_size_reselects_rows_in_the_compressed_space(patchcore_run):
    from edgekit.compress.coreset import coreset_indices
    from edgekit.compress.pca import BankSettings
    from edgekit.families.patchcore.train import compressed_bank

    full = compressed_bank(patchcore_run, BankSettings(dims="16", dtype="float32")).arrays["memory_bank"]
    thinned = compressed_bank(patchcore_run, BankSettings(dims="16", dtype="float32", size=300))
    assert thinned.description["reselected_from"] == patchcore_run.config["bank_rows"] == len(full)
    expected = full[np.sort(coreset_indices(full, 300, seed=patchcore_run.config["seed"]))]
    np.testing.assert_array_equal(thinned.arrays["memory_bank"], expected)


def test_export_options_are_the_default_or_exactly_what_is_given(patchcore_run):
    from edgekit.compress.pca import BankSettings
    from edgekit.export.job import ExportOptions
    from edgekit.families.patchcore.export import bank_settings

    assert bank_settings(ExportOptions()) == DEFAULT_BANK
    assert bank_settings(ExportOptions(bank_dtype="int8")) == BankSettings(dims="full", dtype="int8")
    assert bank_settings(ExportOptions(bank_dims="full", bank_dtype="float32")) == UNCOMPRESSED
    with pytest.raises(EdgekitError, match="--bank-size must be at least 1"):
        bank_settings(ExportOptions(bank_size=0))
    with pytest.raises(EdgekitError, match="--bank-dtype must be one of"):
        bank_settings(ExportOptions(bank_dtype="int4"))
