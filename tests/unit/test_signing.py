"""Signed bundles: keygen, sign, verify, load(trusted_keys=...) and --require-signature."""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fake_bundles import save_knn
from PIL import Image

import edgekit
from edgekit.bundle import (
    digest_line,
    load_bundle,
)
from edgekit.cli import cli
from edgekit.errors import EdgekitError
from edgekit.signing import generate_keys, read_public_key, sign_bundle


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    private, public = generate_keys(tmp_path / "keys" / "factory")
    other_private, other_public = generate_keys(tmp_path / "keys" / "other")
    return {"key": private, "pub": public, "other_key": other_private, "other_pub": other_public}


def test_keygen_writes_a_private_key_only_its_owner_reads_and_a_text_public_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["keygen", "--out", str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    private, public = tmp_path / "site.key", tmp_path / "site.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("edgekit-ed25519-secret-key ")
    assert public.read_text().startswith("edgekit-ed25519-public-key ")
    assert read_public_key(public).key_id in result.output
    again = CliRunner().invoke(cli, ["keygen", "--out", str(tmp_path / "site")])
    assert again.exit_code == 1 and "site.key already exists" in again.output
    assert private.read_text().startswith("edgekit-ed25519-secret-key ")


def test_signed_folder_and_archive_load_with_the_trusted_key(tmp_path: Path, keys) -> None:
    for dest in (tmp_path / "bundle", tmp_path / "model.edgekit"):
        save_knn(dest)
        key_id = sign_bundle(dest, keys["key"])
        loaded = load_bundle(dest, trusted_keys=[keys["pub"]])
        assert loaded.signed_by.startswith(key_id) and key_id == read_public_key(keys["pub"]).key_id
        load_bundle(dest)  # a signature is not needed when no key is required
    with zipfile.ZipFile(tmp_path / "model.edgekit") as zf:
        assert "manifest.sig" in zf.namelist()
    assert (tmp_path / "bundle" / "manifest.sig").read_text().startswith(f"ed25519 {key_id} ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "keys", "model.edgekit"]  # no temp left


def test_unsigned_and_foreign_signed_bundles_are_refused(tmp_path: Path, keys) -> None:
    dest = save_knn(tmp_path / "bundle")
    with pytest.raises(EdgekitError, match=f"^bundle {dest} is not signed, and a signature is required$"):
        load_bundle(dest, trusted_keys=[keys["pub"]])
    sign_bundle(dest, keys["other_key"])
    with pytest.raises(EdgekitError, match=f"bundle {dest} is not signed by a trusted key"):
        load_bundle(dest, trusted_keys=[keys["pub"]])
    with pytest.raises(EdgekitError, match="no trusted keys given"):
        load_bundle(dest, trusted_keys=[])


def test_a_manifest_changed_and_rehashed_after_signing_is_refused(tmp_path: Path, keys) -> None:
    dest = save_knn(tmp_path / "bundle")
    sign_bundle(dest, keys["key"])
    data = json.loads((dest / "manifest.json").read_text())
    data["decision"]["image_threshold"] = 91.5  # an attacker can rewrite both manifest and digest ...
    text = json.dumps(data).encode()
    (dest / "manifest.json").write_bytes(text)
    (dest / "manifest.sha256").write_bytes(digest_line(text))
    assert load_bundle(dest).manifest.decision.image_threshold == 91.5  # ... which the digest cannot see
    with pytest.raises(
        EdgekitError,
        match=f"bundle {dest} is wrongly signed: the signature by {keys['pub']} does not match its manifest",
    ):
        load_bundle(dest, trusted_keys=[keys["pub"]])


def test_two_signers_and_a_resign_keep_one_line_per_key(tmp_path: Path, keys) -> None:
    dest = save_knn(tmp_path / "bundle")
    sign_bundle(dest, keys["key"])
    sign_bundle(dest, keys["other_key"])
    sign_bundle(dest, keys["key"])
    assert len((dest / "manifest.sig").read_text().splitlines()) == 2
    for pub in ("pub", "other_pub"):
        assert load_bundle(dest, trusted_keys=[keys[pub]]).signed_by.startswith(read_public_key(keys[pub]).key_id)


def test_garbled_signature_file_and_wrong_key_files_are_one_line_each(tmp_path: Path, keys) -> None:
    dest = save_knn(tmp_path / "bundle")
    (dest / "manifest.sig").write_text("ed25519 not-a-signature\n")
    with pytest.raises(EdgekitError, match="manifest.sig line 1 is not an Ed25519 signature"):
        load_bundle(dest, trusted_keys=[keys["pub"]])
    with pytest.raises(EdgekitError, match=r"not an edgekit public key file \(it is a private key\)"):
        load_bundle(dest, trusted_keys=[keys["key"]])
    with pytest.raises(EdgekitError, match="not an edgekit private key file"):
        sign_bundle(dest, keys["pub"])
    with pytest.raises(EdgekitError, match="a raw Ed25519 public key has 32 bytes, not 3"):
        load_bundle(dest, trusted_keys=[b"abc"])


def test_raw_32_byte_keys_are_trusted_keys_too(tmp_path: Path, keys) -> None:
    dest = save_knn(tmp_path / "bundle")
    sign_bundle(dest, keys["key"])
    raw = read_public_key(keys["pub"]).raw
    detector = edgekit.load(dest, trusted_keys=[raw])
    assert detector.bundle.signed_by is not None


def test_cli_sign_verify_and_predict_with_require_signature(tmp_path: Path, keys) -> None:
    dest = save_knn(tmp_path / "bundle")
    image = tmp_path / "part.png"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(image)
    runner = CliRunner()
    refused = runner.invoke(cli, ["predict", str(dest), str(image), "--require-signature", str(keys["pub"])])
    assert refused.exit_code == 1
    assert refused.output.strip().splitlines() == [f"error: bundle {dest} is not signed, and a signature is required"]
    not_yet = runner.invoke(cli, ["verify", str(dest), "--pubkey", str(keys["pub"])])
    assert not_yet.exit_code == 1 and "is not signed" in not_yet.output
    signed = runner.invoke(cli, ["sign", str(dest), "--key", str(keys["key"])])
    assert signed.exit_code == 0, signed.output
    checked = runner.invoke(
        cli, ["verify", str(dest), "--pubkey", str(keys["other_pub"]), "--pubkey", str(keys["pub"])]
    )
    assert (
        checked.exit_code == 0 and "intact" in checked.output and read_public_key(keys["pub"]).key_id in checked.output
    )
    scored = runner.invoke(cli, ["predict", str(dest), str(image), "--require-signature", str(keys["pub"])])
    assert scored.exit_code == 0, scored.output
    assert "score" in scored.output


def test_run_passes_require_signature_to_load(tmp_path: Path, keys) -> None:
    dest = save_knn(tmp_path / "bundle")
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(frames / "a.png")
    result = CliRunner().invoke(
        cli, ["run", str(dest), "--source", str(frames), "--events", "none", "--require-signature", str(keys["pub"])]
    )
    assert result.exit_code == 1
    assert f"error: bundle {dest} is not signed, and a signature is required" in result.output
    sign_bundle(dest, keys["key"])
    result = CliRunner().invoke(
        cli, ["run", str(dest), "--source", str(frames), "--events", "none", "--require-signature", str(keys["pub"])]
    )
    assert result.exit_code == 0, result.output


def test_pack_and_unpack_keep_the_digest_and_signature(tmp_path: Path, keys) -> None:
    from edgekit.bundle import pack_bundle, unpack_bundle

    folder = save_knn(tmp_path / "bundle")
    sign_bundle(folder, keys["key"])
    archive = pack_bundle(folder, tmp_path / "packed.edgekit")
    with zipfile.ZipFile(archive) as zf:
        assert {"manifest.sha256", "manifest.sig"} <= set(zf.namelist())
    assert load_bundle(archive, trusted_keys=[keys["pub"]]).signed_by
    unpacked = unpack_bundle(archive, tmp_path / "unpacked")
    assert (unpacked / "manifest.sig").read_bytes() == (folder / "manifest.sig").read_bytes()
    assert load_bundle(unpacked, trusted_keys=[keys["pub"]]).signed_by


def test_an_unsigned_archive_is_refused_before_its_files_are_read(tmp_path: Path, keys, monkeypatch) -> None:
    archive = save_knn(tmp_path / "model.edgekit")
    opened: list[str] = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(
        zipfile.ZipFile,
        "open",
        lambda self, member, *a, **k: (
            opened.append(getattr(member, "filename", member)),
            real_open(self, member, *a, **k),
        )[1],
    )
    with pytest.raises(EdgekitError, match="is not signed, and a signature is required"):
        load_bundle(archive, trusted_keys=[keys["pub"]])
    assert opened == ["manifest.json", "manifest.sha256"]
