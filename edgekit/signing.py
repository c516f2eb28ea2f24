"""Ed25519 signatures of a bundle's manifest (PyNaCl, i.e. libsodium; ``edgekit-anomaly[sign]``).

A signature covers the sha256 of ``manifest.json``, which lists the sha256 of every other file,
so one signature covers the whole bundle. It is stored in ``manifest.sig``, one line per signer:
``ed25519 <key id> <base64 signature>``. The key id is the first 16 hex digits of the sha256 of
the public key. Key files are one line of text, never pickle:
``edgekit-ed25519-secret-key <base64 32-byte seed>`` (written with mode 0600) and
``edgekit-ed25519-public-key <base64 32-byte key>``. PyNaCl is imported only when a signature is
made or checked, so a device that does not check signatures does not need it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

from edgekit.errors import EdgekitError

__all__ = [
    "PublicKey",
    "generate_keys",
    "read_public_key",
    "read_private_key",
    "public_keys",
    "check_signature",
    "signature_text",
    "sign_bundle",
    "SECRET_TAG",
    "PUBLIC_TAG",
]

SECRET_TAG = "edgekit-ed25519-secret-key"
PUBLIC_TAG = "edgekit-ed25519-public-key"
#: What is signed: this prefix and the manifest's sha256 hex (a signature means nothing elsewhere).
_CONTEXT = b"edgekit bundle manifest sha256 v1\n"
_LINE = re.compile(r"ed25519 ([0-9a-f]{16}) ([A-Za-z0-9+/]{86}==)")
_MAX_KEY_FILE = 4096

KeyLike = Union[str, Path, "PublicKey", bytes]


def _nacl():
    try:
        import nacl.exceptions
        import nacl.signing
    except ImportError:
        raise EdgekitError(
            "signing and checking signatures needs PyNaCl: pip install 'edgekit-anomaly[sign]'"
        ) from None
    return nacl


@dataclass(frozen=True)
class PublicKey:
    """A raw 32-byte Ed25519 public key and where it came from (named in messages)."""

    raw: bytes
    label: str = "key"

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()[:16]


def _message(manifest_sha256: str) -> bytes:
    return _CONTEXT + manifest_sha256.encode("ascii")


def _read_key_file(path: Path, tag: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise EdgekitError(f"{path}: cannot read key file ({exc.strerror or exc})") from None
    parts = data.decode("ascii", "replace").split()
    if len(data) > _MAX_KEY_FILE or len(parts) != 2 or parts[0] != tag:
        other = SECRET_TAG if tag == PUBLIC_TAG else PUBLIC_TAG
        hint = f" (it is a {'private' if tag == PUBLIC_TAG else 'public'} key)" if parts[:1] == [other] else ""
        raise EdgekitError(
            f"{path}: not an edgekit {'public' if tag == PUBLIC_TAG else 'private'} key file"
            f"{hint}; make one with `edgekit keygen`"
        )
    try:
        raw = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise EdgekitError(f"{path}: the key is not 32 base64-encoded bytes")
    return raw


def read_public_key(path: Union[str, Path]) -> PublicKey:
    """A public key file (``edgekit keygen`` writes NAME.pub)."""
    return PublicKey(_read_key_file(Path(path), PUBLIC_TAG), label=str(path))


def read_private_key(path: Union[str, Path]) -> bytes:
    """The 32-byte seed in a private key file (``edgekit keygen`` writes NAME.key)."""
    return _read_key_file(Path(path), SECRET_TAG)


def public_keys(keys: Iterable[KeyLike]) -> list[PublicKey]:
    """Public key files (paths), raw 32-byte keys or PublicKey objects, as PublicKey objects."""
    result = []
    for key in keys:
        if isinstance(key, PublicKey):
            result.append(key)
        elif isinstance(key, (bytes, bytearray)):
            if len(key) != 32:
                raise EdgekitError(f"a raw Ed25519 public key has 32 bytes, not {len(key)}")
            result.append(PublicKey(bytes(key), label=f"key {hashlib.sha256(key).hexdigest()[:16]}"))
        elif isinstance(key, (str, Path)):
            result.append(read_public_key(key))
        else:
            raise EdgekitError(
                f"a trusted key is a public key file, 32 raw bytes or a PublicKey, not {type(key).__name__}"
            )
    if not result:
        raise EdgekitError("no trusted keys given: every bundle would be refused")
    return result


def generate_keys(out: Union[str, Path]) -> tuple[Path, Path]:
    """Write a new key pair: OUT.key (private, mode 0600) and OUT.pub. Refuses to replace either."""
    nacl = _nacl()
    out = Path(out)
    private, public = out.with_name(out.name + ".key"), out.with_name(out.name + ".pub")
    for path in (private, public):
        if path.exists() or path.is_symlink():
            raise EdgekitError(f"{path} already exists; choose another --out")
    signing_key = nacl.signing.SigningKey.generate()
    seed = base64.b64encode(bytes(signing_key)).decode()
    verify = base64.b64encode(bytes(signing_key.verify_key)).decode()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"{SECRET_TAG} {seed}\n")
        os.chmod(private, 0o600)  # whatever the umask
        public.write_text(f"{PUBLIC_TAG} {verify}\n")
    except OSError as exc:
        raise EdgekitError(f"could not write keys {out}: {exc}") from None
    return private, public


def signature_text(existing: Optional[bytes], seed: bytes, manifest_sha256: str) -> tuple[bytes, str]:
    """``manifest.sig`` with this key's signature added (replacing its older one): (text, key id)."""
    nacl = _nacl()
    signing_key = nacl.signing.SigningKey(seed)
    key_id = PublicKey(bytes(signing_key.verify_key)).key_id
    signature = base64.b64encode(signing_key.sign(_message(manifest_sha256)).signature).decode()
    lines = [line for line in _lines(existing or b"", "the bundle") if line[0] != key_id]
    lines.append((key_id, signature))
    return "".join(f"ed25519 {k} {s}\n" for k, s in lines).encode(), key_id


def _lines(text: bytes, name: str) -> list[tuple[str, str]]:
    result = []
    for number, line in enumerate(text.decode("ascii", "replace").splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.fullmatch(line.strip())
        if match is None:
            raise EdgekitError(f"bundle {name}: manifest.sig line {number} is not an Ed25519 signature; refused")
        result.append((match.group(1), match.group(2)))
    return result


def check_signature(
    signatures: Optional[bytes], manifest_sha256: str, trusted: Iterable[KeyLike], name: str
) -> PublicKey:
    """The trusted key that signed this manifest digest; an unsigned or wrongly signed bundle is refused."""
    keys = public_keys(trusted)
    if signatures is None:
        raise EdgekitError(f"bundle {name} is not signed, and a signature is required")
    nacl = _nacl()
    lines = _lines(signatures, name)
    by_id = {key.key_id: key for key in keys}
    for key_id, signature in lines:
        if key_id not in by_id:
            continue
        key = by_id[key_id]
        try:
            nacl.signing.VerifyKey(key.raw).verify(_message(manifest_sha256), base64.b64decode(signature))
        except nacl.exceptions.BadSignatureError:
            raise EdgekitError(
                f"bundle {name} is wrongly signed: the signature by {key.label} does not match "
                "its manifest (tampered or damaged); refused"
            ) from None
        return key
    signers = ", ".join(key_id for key_id, _ in lines) or "nobody"
    raise EdgekitError(
        f"bundle {name} is not signed by a trusted key (signed by {signers}; trusted: "
        f"{', '.join(f'{k.key_id} ({k.label})' for k in keys)}); refused"
    )


def sign_bundle(path: Union[str, Path], key: Union[str, Path]) -> str:
    """Verify a bundle (folder or ``.edgekit``) and add this private key's signature; returns its key id.

    A folder gets ``manifest.sig`` (renamed into place); an archive is rewritten with it (atomically).
    """
    from edgekit import bundle as bundles

    path, seed = Path(path), read_private_key(key)
    loaded = bundles.load_bundle(path)
    staged = None
    try:
        existing = bundles._read_capped(loaded.root / bundles.SIGNATURE_NAME, bundles.MAX_SIDECAR_BYTES, str(path))
        text, key_id = signature_text(existing, seed, loaded.manifest_sha256)
        if loaded.root == path:
            staged = bundles._temp_beside(path / bundles.SIGNATURE_NAME, folder=False)
            staged.write_bytes(text)
            os.replace(staged, path / bundles.SIGNATURE_NAME)
        else:
            (loaded.root / bundles.SIGNATURE_NAME).write_bytes(text)
            staged = bundles._temp_beside(path, folder=False)
            bundles._write_archive(loaded.root, loaded.manifest, staged)
            os.replace(staged, path)
    except OSError as exc:
        raise EdgekitError(f"could not sign {path}: {exc}") from None
    finally:
        if staged is not None and staged.exists():
            staged.unlink()
        loaded.close()
    return key_id
