"""Reading a ``.edgekit`` archive safely: caps before work.

The member table is checked first (count, names, kinds, declared sizes), then the manifest is read
(size-capped) and checked against its digest and, when keys are given, its signature. Only then
are the files it lists extracted, each refused at the first byte past its manifest size and hashed
while it streams; a member the manifest does not list is refused unread. Standard library only.
"""

from __future__ import annotations

import hashlib
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Optional, Sequence

from edgekit.errors import EdgekitError
from edgekit.manifest import (
    DIGEST_NAME,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_SIDECAR_BYTES,
    SIDECAR_NAMES,
    SIGNATURE_NAME,
    Manifest,
    check_listing,
    check_relative_path,
    check_size,
    parse_manifest,
)

_CHUNK = 1 << 20


def _check_member(info: zipfile.ZipInfo, archive: Path) -> str:
    name = info.filename.rstrip("/") if info.is_dir() else info.filename
    try:
        check_relative_path(name, f"archive {archive}")
    except EdgekitError as exc:
        raise EdgekitError(f"{exc}; refusing to extract") from None
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise EdgekitError(f"archive {archive}: member {name!r} is a link or special file; refused")
    if info.flag_bits & 0x1:
        raise EdgekitError(f"archive {archive}: member {name!r} is encrypted; refused")
    return name


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, archive: Path) -> Iterator[bytes]:
    """A member's bytes in chunks, refused past ``limit`` or past its declared size (counted here)."""
    if info.file_size > limit:
        raise EdgekitError(
            f"archive {archive}: member {info.filename!r} is {info.file_size} bytes, "
            f"more than the {limit} allowed; refused"
        )
    read = 0
    with zf.open(info) as source:
        for chunk in iter(lambda: source.read(_CHUNK), b""):
            read += len(chunk)
            if read > info.file_size or read > limit:
                raise EdgekitError(
                    f"archive {archive}: member {info.filename!r} is larger than declared "
                    "or over the size limit; refused"
                )
            yield chunk


def extract_archive(
    archive: Path, dest: Path, *, max_members: int, max_bytes: int, trusted_keys: Optional[Sequence[Any]] = None
) -> tuple[Manifest, str, Optional[str]]:
    """Verify an archive into the empty folder ``dest`` (module docstring):
    (manifest, its sha256 hex, the signer or None)."""
    name = str(archive)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > max_members:
                raise EdgekitError(f"archive {archive} has {len(members)} members; the limit is {max_members}")
            names = [_check_member(info, archive) for info in members]
            if len(set(names)) != len(names):
                raise EdgekitError(f"archive {archive} names a member twice; refused")
            if sum(info.file_size for info in members) > max_bytes:
                raise EdgekitError(f"archive {archive} unpacks to more than {max_bytes} bytes; refused")
            files = {n: info for n, info in zip(names, members) if not info.is_dir()}
            folders = {n for n, info in zip(names, members) if info.is_dir()}
            if MANIFEST_NAME not in files:
                raise EdgekitError(f"{name} is not an edgekit bundle: no {MANIFEST_NAME}")
            own = {
                sidecar: b"".join(
                    _read_member(
                        zf,
                        files[sidecar],
                        MAX_MANIFEST_BYTES if sidecar == MANIFEST_NAME else MAX_SIDECAR_BYTES,
                        archive,
                    )
                )
                for sidecar in SIDECAR_NAMES
                if sidecar in files
            }
            manifest, digest, signer = parse_manifest(
                own[MANIFEST_NAME],
                own.get(DIGEST_NAME),
                name,
                signatures=own.get(SIGNATURE_NAME),
                trusted_keys=trusted_keys,
            )
            listed = check_listing(manifest, name)
            parents = {parent.as_posix() for path in listed for parent in PurePosixPath(path).parents}
            extra = sorted(
                [n for n in files if n not in listed and n not in SIDECAR_NAMES]
                + [f"{n}/" for n in folders if n not in parents]
            )
            if extra:
                raise EdgekitError(f"bundle {name} holds files its manifest does not list: {', '.join(extra[:5])}")
            for path in sorted(listed):
                if path not in files:
                    raise EdgekitError(f"bundle {name} is tampered or damaged: {path} is missing")
                check_size(path, files[path].file_size, manifest, name)
            for sidecar, data in own.items():
                with open(dest / sidecar, "xb") as out:
                    out.write(data)
            for path in sorted(listed):
                (dest / path).parent.mkdir(parents=True, exist_ok=True)
                digest_of = hashlib.sha256()
                with open(dest / path, "xb") as out:
                    for chunk in _read_member(zf, files[path], manifest.sizes[path], archive):
                        digest_of.update(chunk)
                        out.write(chunk)
                if digest_of.hexdigest() != manifest.files[path]:
                    raise EdgekitError(f"bundle {name} is tampered or damaged: {path} checksum mismatch")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, zlib.error) as exc:
        raise EdgekitError(f"archive {archive} is damaged: {exc}") from None
    except (OSError, ValueError) as exc:
        raise EdgekitError(f"archive {archive} cannot be extracted: {exc}") from None
    return manifest, digest, signer
