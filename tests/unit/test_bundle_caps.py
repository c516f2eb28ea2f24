"""Caps before work for .edgekit archives: the manifest first, only listed members, each capped at
its manifest size and hashed while streaming; no extracted copies left behind."""

from __future__ import annotations

import gc
import io
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from fake_bundles import save_knn
from test_bundle import NETWORK_BYTES, save_tiny

import edgekit
from edgekit.bundle import (
    Manifest,
    load_bundle,
    unpack_bundle,
)
from edgekit.errors import EdgekitError

IMAGE = np.random.default_rng(3).integers(0, 255, (16, 16, 3)).astype(np.uint8)


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """The archive members edgekit opens for reading, in order."""
    names: list[str] = []
    real_open = zipfile.ZipFile.open

    def recording_open(self, member, *args, **kwargs):
        names.append(member.filename if isinstance(member, zipfile.ZipInfo) else member)
        return real_open(self, member, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording_open)
    return names


def _members(archive: Path) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(archive) as zf:
        return [(info, zf.read(info)) for info in zf.infolist()]


def _rezip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def test_an_unlisted_bomb_is_refused_before_any_member_but_the_manifest_is_read(
    tmp_path: Path, private_temp: Path, opened: list[str]
) -> None:
    good = _members(save_tiny(tmp_path / "tiny.edgekit"))
    bomb = _rezip(tmp_path / "bomb.edgekit", [*good, ("zeros.bin", bytes(64 << 20))])
    assert bomb.stat().st_size < 200_000  # 64 MiB of zeros in well under 1 MB
    opened.clear()
    with pytest.raises(EdgekitError, match=f"^bundle {bomb} holds files its manifest does not list: zeros.bin$"):
        load_bundle(bomb)
    assert opened == ["manifest.json", "manifest.sha256"]
    assert list(private_temp.iterdir()) == []


def test_a_listed_member_of_another_size_is_refused_before_it_is_read(
    tmp_path: Path, private_temp: Path, opened: list[str]
) -> None:
    members = [
        (
            info if info.filename != "model.bin" else "model.bin",
            data if info.filename != "model.bin" else bytes(32 << 20),
        )
        for info, data in _members(save_tiny(tmp_path / "tiny.edgekit"))
    ]
    swapped = _rezip(tmp_path / "swapped.edgekit", members)
    opened.clear()
    with pytest.raises(EdgekitError, match="tampered or damaged: model.bin is 33554432 bytes, its manifest says 1024"):
        load_bundle(swapped)
    assert "model.bin" not in opened
    assert list(private_temp.iterdir()) == []


def test_a_member_is_read_no_further_than_its_manifest_size(tmp_path: Path, private_temp: Path, monkeypatch) -> None:
    archive = save_tiny(tmp_path / "tiny.edgekit")
    served: list[int] = []
    real_open = zipfile.ZipFile.open

    class Endless(io.BytesIO):  # a reader that yields more than its header declares
        def read(self, size: int = -1) -> bytes:
            chunk = super().read(size)
            served.append(len(chunk))
            return chunk

    def endless_model_xml(self, member, *args, **kwargs):
        if getattr(member, "filename", member) != "model.xml":
            return real_open(self, member, *args, **kwargs)
        return Endless(NETWORK_BYTES + b"x" * (8 << 20))

    monkeypatch.setattr(zipfile.ZipFile, "open", endless_model_xml)
    with pytest.raises(EdgekitError, match="member 'model.xml' is larger than declared"):
        load_bundle(archive)
    assert sum(served) <= 1 << 20  # one chunk, not 8 MiB
    assert list(private_temp.iterdir()) == []


def test_a_member_with_the_right_size_and_other_bytes_fails_its_streamed_checksum(
    tmp_path: Path, private_temp: Path
) -> None:
    members = [
        (info, data if info.filename != "model.bin" else bytes(len(data)))
        for info, data in _members(save_tiny(tmp_path / "tiny.edgekit"))
    ]
    with pytest.raises(EdgekitError, match="tampered or damaged: model.bin checksum mismatch"):
        load_bundle(_rezip(tmp_path / "zeroed.edgekit", members))
    assert list(private_temp.iterdir()) == []


def test_an_oversized_manifest_is_refused_unread(tmp_path: Path, private_temp: Path, opened: list[str]) -> None:
    from edgekit.bundle import MAX_MANIFEST_BYTES

    archive = _rezip(tmp_path / "fat.edgekit", [("manifest.json", b" " * (MAX_MANIFEST_BYTES + 1))])
    opened.clear()
    with pytest.raises(
        EdgekitError,
        match=f"member 'manifest.json' is {MAX_MANIFEST_BYTES + 1} bytes, more than the {MAX_MANIFEST_BYTES} allowed",
    ):
        load_bundle(archive)
    assert opened == []
    folder = save_tiny(tmp_path / "bundle")
    (folder / "manifest.json").write_bytes(b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(EdgekitError, match=f"manifest.json is larger than {MAX_MANIFEST_BYTES} bytes"):
        load_bundle(folder)


def test_folder_entries_are_allowed_only_above_listed_files(tmp_path: Path, private_temp: Path) -> None:
    good = _members(save_tiny(tmp_path / "tiny.edgekit"))
    with_parent = _rezip(tmp_path / "zip-r.edgekit", [(zipfile.ZipInfo("head/"), b""), *good])
    assert load_bundle(with_parent).manifest.files
    stray = _rezip(tmp_path / "stray.edgekit", [(zipfile.ZipInfo("spare/"), b""), *good])
    with pytest.raises(EdgekitError, match="does not list: spare/"):
        load_bundle(stray)
    with pytest.raises(EdgekitError, match="does not list: spare/"):
        unpack_bundle(stray, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_changed_size_in_a_folder_bundle_is_named(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "bundle")
    (folder / "model.xml").write_bytes(NETWORK_BYTES + b" ")
    with pytest.raises(EdgekitError, match="model.xml is 29 bytes, its manifest says 28"):
        load_bundle(folder)


def test_twenty_loads_of_an_archive_leave_no_copies_behind(tmp_path: Path, private_temp: Path) -> None:
    archive = save_knn(tmp_path / "model.edgekit")
    counts = []
    for _ in range(20):
        detector = edgekit.load(archive)
        detector.predict(IMAGE)
        counts.append(len(list(private_temp.iterdir())))
    assert max(counts) == 1  # the previous Detector's copy went with it
    del detector
    gc.collect()
    assert list(private_temp.iterdir()) == []
    for _ in range(20):
        with edgekit.load(archive) as detector:
            detector.predict(IMAGE)
        assert list(private_temp.iterdir()) == []
    bundle = load_bundle(archive)
    bundle.close()
    bundle.close()  # twice is fine
    assert list(private_temp.iterdir()) == []
    with pytest.raises(EdgekitError, match="threads must be an integer from 0 to 256, not -1"):
        edgekit.load(archive, threads=-1)  # refused after extraction
    assert list(private_temp.iterdir()) == []  # a load that fails leaves nothing either


# A bounded manifest: every field the runtime uses is type- and range-checked, one line each.


def _rewritten(folder: Path, change) -> Path:
    from edgekit.bundle import digest_line

    data = json.loads((folder / "manifest.json").read_text())
    change(data)
    text = json.dumps(data).replace('"<2000 levels>"', "[" * 2000 + "]" * 2000).encode()
    (folder / "manifest.json").write_bytes(text)
    (folder / "manifest.sha256").write_bytes(digest_line(text))
    return folder


def _set(section: str, key: str, value):
    def change(data):
        target = data
        for part in section.split("."):
            target = target[part]
        if value is _DELETE:
            del target[key]
        else:
            target[key] = value

    return change


_DELETE = object()


@pytest.mark.parametrize(
    "change, message",
    [
        (_set("input", "height", 60000), "input height must be an integer from 8 to 4096, not 60000"),
        (_set("input", "width", 4), "input width must be an integer from 8 to 4096, not 4"),
        (_set("input", "width", "16"), "field 'input.width' must be an integer, not a string"),
        (_set("input", "channels", 2), "input channels must be 1 or 3, not 2"),
        (_set("input", "std", [0.25, 0.0, 0.25]), "input std must be positive"),
        (_set("input", "std", [0.25, -1, 0.25]), "input std must be positive"),
        (_set("head.params", "blur_sigma", 1e9), "head param 'blur_sigma' must be from 0.0 to 64.0, not 1000000000.0"),
        (_set("head.params", "blur_sigma", "4"), "head param 'blur_sigma' must be a number, not '4'"),
        (_set("head.params", "num_neighbors", _DELETE), "head param 'num_neighbors' is missing"),
        (_set("head.params", "num_neighbors", "9"), "head param 'num_neighbors' must be an integer, not '9'"),
        (_set("head.params", "num_neighbors", 9.0), "head param 'num_neighbors' must be an integer, not 9.0"),
        (_set("head.params", "num_neighbors", 0), "head param 'num_neighbors' must be from 1 to 1024, not 0"),
        (_set("head.params", "num_neighbors", 10**9), "head param 'num_neighbors' must be from 1 to 1024"),
        (_set("head.params", "bank", "int8"), "head param 'bank' must be an object, not 'int8'"),
        (_set("head.params", "bank", {"dtype": "float64"}), "head param 'dtype' must be one of float32, float16, int8"),
        (_set("export", "threads", -1), "export.threads must be an integer from 0 to 256, not -1"),
        (_set("export", "threads", "4"), "export.threads must be an integer from 0 to 256, not '4'"),
        (_set("export", "threads", 10**6), "export.threads must be an integer from 0 to 256, not 1000000"),
        (_set("source", "nested", "<2000 levels>"), "nested deeper than 32 levels"),
    ],
)
def test_a_manifest_out_of_bounds_is_one_line_naming_the_bundle(tmp_path: Path, change, message: str) -> None:
    folder = save_knn(tmp_path / "bundle")
    edgekit.load(folder).predict(IMAGE)  # the bundle as saved is fine
    _rewritten(folder, change)
    with pytest.raises(EdgekitError) as caught:
        edgekit.load(folder)
    assert message in str(caught.value)
    assert str(folder) in str(caught.value) and "\n" not in str(caught.value)


def test_deep_or_huge_manifest_text_is_refused_before_parsing() -> None:
    from edgekit.manifest import MAX_MANIFEST_BYTES

    with pytest.raises(EdgekitError, match="manifest.json: nested deeper than 32 levels; refused"):
        Manifest.from_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(EdgekitError, match="manifest.json: larger than"):
        Manifest.from_json(" " * (MAX_MANIFEST_BYTES + 1))


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path: Path) -> None:
    folder = save_knn(tmp_path / "bundle")
    _rewritten(folder, _set("source", "note", "[" * 100 + "{" * 100))
    assert load_bundle(folder).manifest.source["note"].startswith("[[[")


@pytest.mark.parametrize(
    "kind, params, arrays, message",
    [
        ("map", {"score": "median"}, {}, "head param 'score' must be one of max, mean, top_mean"),
        ("map", {"top_fraction": 2.0}, {}, "head param 'top_fraction' must be from 0.0 to 1.0"),
        ("map", {"blur_sigma": 1e9}, {}, "head param 'blur_sigma' must be from 0.0 to 64.0"),
        ("map", ["not", "an", "object"], {}, "head params must be an object"),
        (
            "mahalanobis",
            {"dtype": "float64"},
            {"mean": np.zeros((16, 2), np.float32), "inv_covariance": np.zeros((16, 2, 2), np.float32)},
            "head param 'dtype' must be one of float32, float16",
        ),
        (
            "mahalanobis",
            {"blur_sigma": -1},
            {"mean": np.zeros((16, 2), np.float32), "inv_covariance": np.zeros((16, 2, 2), np.float32)},
            "head param 'blur_sigma' must be from 0.0 to 64.0, not -1.0",
        ),
    ],
)
def test_every_head_checks_its_params(kind: str, params, arrays, message: str) -> None:
    from edgekit.runtime.heads import build_head

    with pytest.raises(EdgekitError, match=message.replace("(", r"\(").replace(".", r"\.")):
        build_head(kind, params, arrays, output_height=16, output_width=16)


def test_an_archive_with_a_corrupt_deflate_stream_is_one_error(tmp_path: Path) -> None:
    """Found by the fuzzer: one flipped bit inside a compressed member raised zlib.error."""
    archive = save_knn(tmp_path / "model.edgekit")
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("manifest.json")
    data[info.header_offset + 30 + len(info.filename) + 1] ^= 1  # in the deflate block header
    archive.write_bytes(bytes(data))
    with pytest.raises(zlib.error), zipfile.ZipFile(archive) as zf:  # what the flip does to zipfile itself
        zf.read("manifest.json")
    with pytest.raises(EdgekitError, match="damaged|tampered"):
        edgekit.load(archive)
    with pytest.raises(EdgekitError, match="damaged|tampered"):
        unpack_bundle(archive, tmp_path / "out")
