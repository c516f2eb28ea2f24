"""The bundle contract: strict manifest, checksums, atomic save, safe archive extraction."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgekit.bundle as bundle_module
from edgekit.bundle import (
    SCHEMA_VERSION,
    Bundle,
    Decision,
    HeadSpec,
    Manifest,
    NetworkSpec,
    load_bundle,
    pack_bundle,
    save_bundle,
    sha256_file,
    unpack_bundle,
)
from edgekit.errors import EdgekitError
from edgekit.preprocess import InputSpec

NETWORK_BYTES = b"<net version='11'>fake</net>"
WEIGHT_BYTES = bytes(range(256)) * 4


def make_manifest(**overrides: Any) -> Manifest:
    """A valid manifest for a tiny kNN bundle (model.xml + model.bin + one memory bank)."""
    fields: dict[str, Any] = dict(
        schema_version=SCHEMA_VERSION,
        edgekit_version="0.1.0",
        model="patchcore",
        backbone="wide_resnet50_2",
        target="x86",
        runtime="fake",
        device="CPU",
        precision="fp32",
        input=InputSpec(height=32, width=32, channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        network=NetworkSpec(
            format="openvino", files=("model.xml", "model.bin"), input_name="image", output_names=("features",)
        ),
        head=HeadSpec(
            kind="knn", params={"k": 1, "feature_shape": [4, 4]}, arrays={"memory_bank": "head/memory_bank.npy"}
        ),
        decision=Decision(
            image_threshold=0.1 + 0.2,
            pixel_threshold=1 / 3,
            image_center=0.125,
            pixel_center=-2.5e-7,
            method="max of 20 held-out normals",
            fitted_on=20,
        ),
        source={"run": "abc123", "dataset": "synthetic"},
        export={"precision": "fp32", "ops_kept_float": []},
    )
    fields.update(overrides)
    return Manifest(**fields)


MEMORY_BANK = np.arange(24, dtype=np.float32).reshape(6, 4) / 7


def save_tiny(dest: Path, manifest: Manifest | None = None, **options: Any) -> Path:
    return save_bundle(
        dest,
        manifest or make_manifest(),
        files={"model.xml": NETWORK_BYTES, "model.bin": WEIGHT_BYTES},
        arrays={"head/memory_bank.npy": MEMORY_BANK},
        **options,
    )


def rewrite_manifest(folder: Path, data: dict[str, Any]) -> None:
    """Write a changed manifest and a matching digest, as anyone editing a bundle on purpose can."""
    text = json.dumps(data).encode()
    (folder / "manifest.json").write_bytes(text)
    (folder / "manifest.sha256").write_bytes(bundle_module.digest_line(text))


def manifest_dict(**overrides: Any) -> dict[str, Any]:
    data = json.loads(make_manifest().to_json())
    data.update(overrides)
    return data


def test_manifest_json_round_trip_keeps_tuples_and_exact_floats() -> None:
    manifest = make_manifest()
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest
    assert again.input.mean == (0.485, 0.456, 0.406)
    assert again.network.files == ("model.xml", "model.bin")
    assert again.decision.image_threshold == 0.30000000000000004
    assert again.decision.pixel_center == -2.5e-7


def test_manifest_normalises_lists_and_numpy_scalars_on_construction() -> None:
    manifest = make_manifest(
        network=NetworkSpec("onnx", ["model.onnx"], "image", ["a", "b"]), source={"count": np.int64(3), "shape": (2, 2)}
    )
    assert manifest.network.files == ("model.onnx",)
    assert manifest.source == {"count": 3, "shape": [2, 2]}
    assert Manifest.from_json(manifest.to_json()) == manifest


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["decision"].pop("image_threshold"), "field 'decision.image_threshold' is missing"),
        (lambda d: d.update(colour="red"), "field 'colour' is unknown"),
        (lambda d: d["input"].update(gamma=2.2), "field 'input.gamma' is unknown"),
        (lambda d: d["decision"].update(fitted_on="20"), "field 'decision.fitted_on' must be an integer"),
        (lambda d: d["decision"].update(fitted_on=True), "field 'decision.fitted_on' must be an integer"),
        (lambda d: d["network"].update(files="model.xml"), "field 'network.files' must be a list"),
        (lambda d: d["input"].update(channels=2), "field 'input' is invalid: input channels"),
        (lambda d: d["network"].update(files=["../model.xml"]), "not a plain relative path"),
        (lambda d: d["files"].update({"/etc/passwd": "0" * 64}), "not a plain relative path"),
        (lambda d: d["files"].update({"model.xml": "beef"}), "not a sha256 hex digest"),
    ],
)
def test_manifest_from_json_names_the_bad_field(mutate: Any, message: str) -> None:
    data = manifest_dict()
    mutate(data)
    with pytest.raises(EdgekitError, match=message.replace(".", r"\.").replace("(", r"\(")) as info:
        Manifest.from_json(json.dumps(data))
    assert str(info.value).startswith("manifest.json: ")


def test_manifest_from_json_refuses_future_and_unknown_schema_and_bad_json() -> None:
    with pytest.raises(EdgekitError, match="schema_version 2 is newer .*upgrade edgekit"):
        Manifest.from_json(json.dumps(manifest_dict(schema_version=2, new_thing=1)))
    with pytest.raises(EdgekitError, match="unknown schema_version 0"):
        Manifest.from_json(json.dumps(manifest_dict(schema_version=0)))
    with pytest.raises(EdgekitError, match="not valid JSON"):
        Manifest.from_json('{"schema_version": 1,')
    with pytest.raises(EdgekitError, match="NaN is not valid JSON"):
        Manifest.from_json(make_manifest().to_json().replace("0.125", "NaN"))
    with pytest.raises(EdgekitError, match="key 'model' appears twice"):
        Manifest.from_json(make_manifest().to_json().replace('"model":', '"model": "x", "model":'))


def test_round_trip_folder_bundle(tmp_path: Path) -> None:
    dest = save_tiny(tmp_path / "bundle")
    loaded = load_bundle(dest)
    assert loaded.manifest == dataclasses.replace(
        make_manifest(), files=loaded.manifest.files, sizes=loaded.manifest.sizes
    )
    assert loaded.manifest.sizes == {"head/memory_bank.npy": 224, "model.bin": 1024, "model.xml": 28}
    assert sorted(loaded.manifest.files) == ["head/memory_bank.npy", "model.bin", "model.xml"]
    assert loaded.manifest.files["model.xml"] == sha256_file(dest / "model.xml")
    assert loaded.path("model.xml").read_bytes() == NETWORK_BYTES
    np.testing.assert_array_equal(loaded.array("memory_bank"), MEMORY_BANK)
    expected_size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert loaded.size_bytes() == expected_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temp folder left


def test_round_trip_single_file_bundle_is_deterministic(tmp_path: Path) -> None:
    archive = save_tiny(tmp_path / "tiny.edgekit")
    assert archive.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["tiny.edgekit"]
    loaded = load_bundle(archive)
    folder_twin = load_bundle(save_tiny(tmp_path / "folder"))
    assert loaded.manifest == folder_twin.manifest
    np.testing.assert_array_equal(loaded.array("memory_bank"), MEMORY_BANK)
    repacked = pack_bundle(tmp_path / "folder", tmp_path / "again.edgekit")
    assert repacked.read_bytes() == archive.read_bytes()
    unpacked = unpack_bundle(archive, tmp_path / "unpacked")
    assert load_bundle(unpacked).manifest == loaded.manifest


def test_tampered_file_is_named(tmp_path: Path) -> None:
    dest = save_tiny(tmp_path / "bundle")
    (dest / "model.bin").write_bytes(WEIGHT_BYTES[:-1] + b"\x00")
    with pytest.raises(EdgekitError, match="tampered or damaged: model.bin checksum mismatch"):
        load_bundle(dest)


def test_missing_file_is_named(tmp_path: Path) -> None:
    dest = save_tiny(tmp_path / "bundle")
    (dest / "head" / "memory_bank.npy").unlink()
    with pytest.raises(EdgekitError, match="head/memory_bank.npy is missing"):
        load_bundle(dest)


def test_unlisted_extra_file_is_refused(tmp_path: Path) -> None:
    dest = save_tiny(tmp_path / "bundle")
    (dest / "head" / "extra.npy").write_bytes(b"x")
    with pytest.raises(EdgekitError, match="does not list: head/extra.npy"):
        load_bundle(dest)


def test_symlink_inside_a_folder_bundle_is_refused(tmp_path: Path) -> None:
    dest = save_tiny(tmp_path / "bundle")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(WEIGHT_BYTES)
    (dest / "model.bin").unlink()
    (dest / "model.bin").symlink_to(outside)
    with pytest.raises(EdgekitError, match="symbolic links, refused: model.bin"):
        load_bundle(dest)


def test_changed_threshold_in_the_manifest_is_refused_as_damage(tmp_path: Path) -> None:
    dest = save_tiny(tmp_path / "bundle")
    text = (dest / "manifest.json").read_text()
    assert '"image_threshold": 0.30000000000000004' in text
    (dest / "manifest.json").write_text(
        text.replace('"image_threshold": 0.30000000000000004', '"image_threshold": 90.30000000000000004')
    )
    with pytest.raises(EdgekitError) as info:
        load_bundle(dest)
    assert str(info.value) == (
        f"bundle {dest} is tampered or damaged: manifest.json does not match its digest in manifest.sha256"
    )


def test_changed_manifest_inside_an_archive_is_refused_as_damage(tmp_path: Path) -> None:
    archive = save_tiny(tmp_path / "tiny.edgekit")
    with zipfile.ZipFile(archive) as zf:
        members = [(info, zf.read(info)) for info in zf.infolist()]
    assert [info.filename for info, _ in members] == [
        "head/memory_bank.npy",
        "manifest.json",
        "manifest.sha256",
        "model.bin",
        "model.xml",
    ]
    changed = [
        (info, data.replace(b'"fitted_on": 20', b'"fitted_on": 21') if info.filename == "manifest.json" else data)
        for info, data in members
    ]
    with pytest.raises(
        EdgekitError,
        match=f"bundle {archive.parent / 'changed.edgekit'} is tampered or "
        "damaged: manifest.json does not match its digest",
    ):
        load_bundle(_zip(tmp_path / "changed.edgekit", changed))


def test_the_digest_is_sha256sum_format_and_a_missing_one_is_refused(tmp_path: Path) -> None:
    import hashlib

    dest = save_tiny(tmp_path / "bundle")
    digest = hashlib.sha256((dest / "manifest.json").read_bytes()).hexdigest()
    assert (dest / "manifest.sha256").read_text() == f"{digest}  manifest.json\n"
    assert load_bundle(dest).manifest_sha256 == digest
    (dest / "manifest.sha256").unlink()
    with pytest.raises(EdgekitError, match="tampered or damaged: it has no manifest.sha256"):
        load_bundle(dest)


def test_only_edgekit_writes_the_digest_and_signature(tmp_path: Path) -> None:
    for name in ("manifest.sha256", "manifest.sig"):
        with pytest.raises(EdgekitError, match=f"{name} is written by edgekit itself"):
            save_bundle(tmp_path / "b", make_manifest(), files={name: b"x"})


def test_manifest_with_bad_field_on_disk_names_bundle_and_field(tmp_path: Path) -> None:
    dest = save_tiny(tmp_path / "bundle")
    data = json.loads((dest / "manifest.json").read_text())
    del data["decision"]["pixel_threshold"]
    rewrite_manifest(dest, data)
    with pytest.raises(EdgekitError, match="manifest.json: field 'decision.pixel_threshold' is missing"):
        load_bundle(dest)


def test_object_array_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(EdgekitError, match="object arrays would need pickle"):
        save_bundle(
            tmp_path / "bundle",
            make_manifest(),
            files={"model.xml": NETWORK_BYTES, "model.bin": WEIGHT_BYTES},
            arrays={"head/memory_bank.npy": np.array([{"a": 1}], dtype=object)},
        )
    assert list(tmp_path.iterdir()) == []


def test_array_never_unpickles_even_with_a_matching_checksum(tmp_path: Path) -> None:
    dest = save_tiny(tmp_path / "bundle")
    bank = dest / "head" / "memory_bank.npy"
    with open(bank, "wb") as handle:
        np.save(handle, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    data = json.loads((dest / "manifest.json").read_text())
    data["files"]["head/memory_bank.npy"] = sha256_file(bank)
    data["sizes"]["head/memory_bank.npy"] = bank.stat().st_size
    rewrite_manifest(dest, data)
    loaded = load_bundle(dest)  # checksums and digest agree, so the bundle itself verifies
    with pytest.raises(EdgekitError, match="cannot be loaded without pickle"):
        loaded.array("memory_bank")


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_saved_bundles_get_the_ordinary_mode_for_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        folder = save_tiny(tmp_path / "bundle")
        archive = save_tiny(tmp_path / "tiny.edgekit")
        packed = pack_bundle(folder, tmp_path / "packed.edgekit")
        unpacked = unpack_bundle(archive, tmp_path / "unpacked")
    finally:
        os.umask(previous)
    dir_mode, file_mode = 0o777 & ~umask, 0o666 & ~umask
    for made in (folder, unpacked):
        assert stat.S_IMODE(made.stat().st_mode) == dir_mode  # mkdtemp would have given 0o700
        assert stat.S_IMODE((made / "head").stat().st_mode) == dir_mode
        assert stat.S_IMODE((made / "model.bin").stat().st_mode) == file_mode
        assert stat.S_IMODE((made / "manifest.json").stat().st_mode) == file_mode
    for made in (archive, packed):
        assert stat.S_IMODE(made.stat().st_mode) == file_mode  # mkstemp would have given 0o600


def test_errors_from_a_loaded_archive_name_the_archive_not_its_temp_copy(tmp_path: Path, private_temp: Path) -> None:
    archive = save_tiny(tmp_path / "tiny.edgekit")
    loaded = load_bundle(archive)
    assert loaded.origin == archive and loaded.root.parent == private_temp
    with pytest.raises(EdgekitError, match="has no file 'missing.bin'") as missing:
        loaded.path("missing.bin")
    with pytest.raises(EdgekitError, match="has no head array 'coreset'") as no_array:
        loaded.array("coreset")
    (loaded.root / "head" / "memory_bank.npy").write_bytes(b"not an npy file")
    with pytest.raises(EdgekitError, match="cannot be loaded without pickle") as damaged:
        loaded.array("memory_bank")
    for caught in (missing, no_array, damaged):
        assert str(caught.value).startswith(f"bundle {archive}")
        assert str(private_temp) not in str(caught.value)


def test_bundle_origin_is_the_folder_given_and_defaults_to_root(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "bundle")
    assert load_bundle(folder).origin == folder
    direct = Bundle(tmp_path / "bundle", make_manifest())  # the two-argument form still works
    assert direct.origin == direct.root == tmp_path / "bundle"
    assert Bundle(folder, make_manifest(), origin=str(tmp_path / "b.edgekit")).origin == tmp_path / "b.edgekit"


def test_save_refuses_incomplete_bundles_and_unsafe_paths(tmp_path: Path) -> None:
    with pytest.raises(EdgekitError, match="incomplete: model.bin is not among its files"):
        save_bundle(
            tmp_path / "a",
            make_manifest(),
            files={"model.xml": NETWORK_BYTES},
            arrays={"head/memory_bank.npy": MEMORY_BANK},
        )
    for bad in ("../model.bin", "/tmp/model.bin", "sub\\model.bin", "./model.bin"):
        with pytest.raises(EdgekitError, match="not a plain relative path"):
            save_bundle(tmp_path / "b", make_manifest(), files={bad: b"x"})
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_leaves_no_bundle_and_no_temp_folder(tmp_path: Path, monkeypatch) -> None:
    def disk_full(folder: Path, manifest: Manifest) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_module, "_write_manifest", disk_full)
    with pytest.raises(EdgekitError, match="could not write bundle .*No space left"):
        save_tiny(tmp_path / "bundle")
    with pytest.raises(EdgekitError, match="could not write bundle"):
        save_tiny(tmp_path / "bundle.edgekit")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_when_asked(tmp_path: Path, monkeypatch) -> None:
    dest = save_tiny(tmp_path / "bundle")
    with pytest.raises(EdgekitError, match="already exists"):
        save_tiny(dest)
    newer = make_manifest(precision="int8")
    save_tiny(dest, newer, overwrite=True)
    assert load_bundle(dest).manifest.precision == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    # A failed overwrite keeps the old bundle intact.
    monkeypatch.setattr(bundle_module, "_write_manifest", lambda *_: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(EdgekitError, match="boom"):
        save_tiny(dest, make_manifest(precision="fp16"), overwrite=True)
    assert load_bundle(dest).manifest.precision == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_overwrite_refuses_to_replace_something_that_is_not_a_bundle(tmp_path: Path) -> None:
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(EdgekitError, match="not an edgekit bundle"):
        save_tiny(precious, overwrite=True)
    assert (precious / "cat.jpg").read_bytes() == b"meow"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_neither_folder_nor_archive_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EdgekitError, match="neither a bundle folder nor"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "model.onnx").write_bytes(b"not a zip")
    with pytest.raises(EdgekitError, match="neither a bundle folder nor"):
        load_bundle(tmp_path / "model.onnx")
    with pytest.raises(EdgekitError, match="no manifest.json"):
        load_bundle(tmp_path)


def _zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


def _symlink_member(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize(
    "members, limits, message",
    [
        ([("../evil", b"x")], {}, "not a plain relative path"),
        ([("head/../../evil", b"x")], {}, "not a plain relative path"),
        ([("/tmp/edgekit-test-evil-absolute", b"x")], {}, "not a plain relative path"),
        ([(_symlink_member("model.bin", "/etc/passwd"), b"/etc/passwd")], {}, "link or special file"),
        ([("manifest.json", b"{}"), ("manifest.json", b"{}")], {}, "names a member twice"),
        ([(f"f{i}", b"") for i in range(6)], {"max_members": 5}, "has 6 members; the limit is 5"),
        ([("big", b"0" * 2000)], {"max_bytes": 1000}, "more than 1000 bytes"),
    ],
)
def test_unsafe_archives_are_refused_with_nothing_written(
    tmp_path: Path, private_temp: Path, members: list, limits: dict, message: str
) -> None:
    archive = _zip(tmp_path / "bad.edgekit", members)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(EdgekitError, match=message):
        load_bundle(archive, **limits)
    with pytest.raises(EdgekitError, match=message):
        unpack_bundle(archive, tmp_path / "out", **limits)
    assert list(private_temp.iterdir()) == []  # the extraction folder was removed
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not Path("/tmp/edgekit-test-evil-absolute").exists()
    assert not (tmp_path.parent / "evil").exists()


def test_member_larger_than_its_header_is_refused(tmp_path: Path, private_temp: Path) -> None:
    archive = _zip(tmp_path / "liar.edgekit", [("manifest.json", b"A" * 5000)])
    raw = bytearray(archive.read_bytes())
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (100).to_bytes(4, "little")  # declared size 100, real 5000
    archive.write_bytes(bytes(raw))
    with pytest.raises(EdgekitError, match="damaged|larger than declared"):
        load_bundle(archive)
    assert list(private_temp.iterdir()) == []


def test_loaded_archive_is_extracted_into_a_private_temp_dir(tmp_path: Path, private_temp: Path) -> None:
    loaded = load_bundle(save_tiny(tmp_path / "tiny.edgekit"))
    assert loaded.root.parent == private_temp
    assert sorted(p.relative_to(loaded.root).as_posix() for p in loaded.root.rglob("*") if p.is_file()) == [
        "head/memory_bank.npy",
        "manifest.json",
        "manifest.sha256",
        "model.bin",
        "model.xml",
    ]
    assert loaded.path("model.xml").read_bytes() == NETWORK_BYTES


def test_extraction_counts_bytes_instead_of_trusting_the_reader(
    tmp_path: Path, private_temp: Path, monkeypatch
) -> None:
    archive = _zip(tmp_path / "grows.edgekit", [("manifest.json", b"{}")])
    # A reader that yields more than the header declares (CPython's truncates; others may not).
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info, *a, **k: io.BytesIO(b"x" * 5000))
    with pytest.raises(EdgekitError, match="'manifest.json' is larger than declared"):
        load_bundle(archive)
    assert list(private_temp.iterdir()) == []


def test_overwrite_never_replaces_the_current_folder_even_when_it_is_a_bundle(tmp_path: Path, monkeypatch) -> None:
    bundle = save_tiny(tmp_path / "b")
    monkeypatch.chdir(bundle)
    with pytest.raises(EdgekitError, match="it is the current folder"):
        save_tiny(Path("."), overwrite=True)
    assert load_bundle(bundle).manifest.model  # still there, still whole


def test_a_save_sweeps_the_staging_a_killed_process_left_beside_it(tmp_path: Path) -> None:
    from edgekit.staging import _host

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a PID that no longer runs
    left = tmp_path / f".b.partial-{_host()}.{dead.pid}-0123456789ab"
    left.mkdir()
    (left / "model.bin").write_bytes(b"half")
    save_tiny(tmp_path / "b")
    assert not left.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
