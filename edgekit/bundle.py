"""The bundle: manifest.json + network files + head arrays (.npy) + the sha256 of each.

A bundle is a folder, or the same folder as one deterministic zip file ending in ``.edgekit``.
The manifest schema lives in :mod:`edgekit.manifest` and is re-exported here. Saving writes
into a temporary folder beside the destination and renames it into place; loading verifies
every checksum and size and refuses unlisted files; an archive is read by
:mod:`edgekit.archive` (its manifest first, then only the members it lists, each capped at its
size). The manifest itself is covered by a detached digest, ``manifest.sha256`` (the format
``sha256sum -c`` reads), written at save and checked before the manifest is parsed: a changed
threshold is refused as damage. A digest protects against accidents, not attackers (who can
rewrite both files); ``manifest.sig`` (see :mod:`edgekit.signing`) does that. Standard library +
numpy only: the device imports this.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import shutil
import stat
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from edgekit.archive import extract_archive
from edgekit.errors import EdgekitError
from edgekit.manifest import (
    DIGEST_NAME,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_SIDECAR_BYTES,
    SCHEMA_VERSION,
    SIDECAR_NAMES,
    SIGNATURE_NAME,
    Decision,
    HeadSpec,
    Manifest,
    NetworkSpec,
    check_listing,
    check_relative_path,
    check_size,
    digest_line,
    parse_manifest,
)
from edgekit.staging import make_staging, owner_tag, refuse_unowned, sweep_stale

__all__ = [
    "SCHEMA_VERSION",
    "MANIFEST_NAME",
    "DIGEST_NAME",
    "SIGNATURE_NAME",
    "MAX_MANIFEST_BYTES",
    "NetworkSpec",
    "HeadSpec",
    "Decision",
    "Manifest",
    "check_relative_path",
    "digest_line",
    "ARCHIVE_SUFFIX",
    "DEFAULT_MAX_MEMBERS",
    "DEFAULT_MAX_BYTES",
    "Bundle",
    "sha256_file",
    "save_bundle",
    "load_bundle",
    "unpack_bundle",
    "pack_bundle",
]

ARCHIVE_SUFFIX = ".edgekit"
DEFAULT_MAX_MEMBERS = 10_000
DEFAULT_MAX_BYTES = 4 * 1024**3
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 20
_NOTHING: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk.

    ``root`` is the folder read from (a private temp copy for archives); ``origin`` is the path
    the user gave, the folder or the ``.edgekit`` file (default ``root``): messages name it.
    """

    root: Path
    manifest: Manifest
    origin: Optional[Path] = None
    manifest_sha256: str = ""  # of the manifest bytes this bundle was verified from
    signed_by: Optional[str] = None  # "key id (key file)" when loaded with trusted keys

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin", Path(self.root if self.origin is None else self.origin))

    def path(self, relative: str) -> Path:
        """The absolute path of a listed bundle file."""
        check_relative_path(relative, f"bundle {self.origin}")
        if relative not in SIDECAR_NAMES and relative not in self.manifest.files:
            raise EdgekitError(f"bundle {self.origin} has no file {relative!r}")
        return self.root / relative

    def array(self, name: str) -> np.ndarray:
        """Load the head array ``name``; never unpickles."""
        if name not in self.manifest.head.arrays:
            raise EdgekitError(
                f"bundle {self.origin} has no head array {name!r}; it has {sorted(self.manifest.head.arrays)}"
            )
        path = self.path(self.manifest.head.arrays[name])
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise EdgekitError(
                f"bundle {self.origin}: head array {name!r} cannot be loaded without pickle or is damaged ({exc})"
            ) from None

    def close(self) -> None:
        """Remove the private copy a ``.edgekit`` archive was extracted to (a folder: nothing).

        Also done when the Bundle is garbage collected or the process exits; calling it twice is fine.
        """
        cleanup = self.__dict__.get("_cleanup")
        if cleanup is not None:
            cleanup()

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def size_bytes(self) -> int:
        """Bytes of every file in the bundle, manifest, digest and signature included."""
        names = [*SIDECAR_NAMES, *self.manifest.files]
        return sum((self.root / name).stat().st_size for name in names if (self.root / name).is_file())


def sha256_file(path: Union[str, Path]) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(root: Path, origin: Path, trusted_keys: Optional[Sequence[Any]] = None) -> Bundle:
    """Parse the manifest and prove every listed file is present, intact and alone.

    ``root`` is the folder on disk; ``origin`` is what the user named, used in every message.
    With ``trusted_keys``, the manifest must also carry a valid signature by one of them.
    """
    name = str(origin)
    if (root / MANIFEST_NAME).is_symlink() or not (root / MANIFEST_NAME).is_file():
        raise EdgekitError(f"{name} is not an edgekit bundle: no {MANIFEST_NAME}")
    manifest, digest, signer = parse_manifest(
        _read_capped(root / MANIFEST_NAME, MAX_MANIFEST_BYTES, name),
        _read_capped(root / DIGEST_NAME, MAX_SIDECAR_BYTES, name),
        name,
        signatures=_read_capped(root / SIGNATURE_NAME, MAX_SIDECAR_BYTES, name),
        trusted_keys=trusted_keys,
    )
    listed = check_listing(manifest, name)
    extra, links = [], []
    for folder, dirnames, filenames in os.walk(root):
        for entry in [*dirnames, *filenames]:
            full = Path(folder) / entry
            relative = full.relative_to(root).as_posix()
            if full.is_symlink():
                links.append(relative)
            elif entry in filenames and relative not in listed and relative not in SIDECAR_NAMES:
                extra.append(relative)
    if links:
        raise EdgekitError(f"bundle {name} contains symbolic links, refused: {', '.join(sorted(links)[:5])}")
    if extra:
        raise EdgekitError(f"bundle {name} holds files its manifest does not list: {', '.join(sorted(extra)[:5])}")
    for path, expected in sorted(manifest.files.items()):
        full = root / path
        if not full.is_file():
            raise EdgekitError(f"bundle {name} is tampered or damaged: {path} is missing")
        check_size(path, full.stat().st_size, manifest, name)
        if sha256_file(full) != expected:
            raise EdgekitError(f"bundle {name} is tampered or damaged: {path} checksum mismatch")
    return Bundle(root=root, manifest=manifest, origin=origin, manifest_sha256=digest, signed_by=signer)


def _read_capped(path: Path, cap: int, name: str) -> Optional[bytes]:
    """The bytes of a bundle's own small file (None if absent); refused when over ``cap``."""
    if not (path.exists() or path.is_symlink()):
        return None
    if path.is_symlink() or not path.is_file():
        raise EdgekitError(f"bundle {name}: {path.name} is not a regular file; refused")
    with open(path, "rb") as handle:
        data = handle.read(cap + 1)
    if len(data) > cap:
        raise EdgekitError(f"bundle {name}: {path.name} is larger than {cap} bytes; refused")
    return data


def _is_bundle(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        return (path / MANIFEST_NAME).is_file()
    return path.is_file() and zipfile.is_zipfile(path)


def _temp_beside(dest: Path, *, folder: bool) -> Path:
    """A new, uniquely named ``.partial`` folder or empty file beside ``dest``, named with this host
    and PID so that a later save sweeps what a killed process left (``edgekit.staging``).

    Made with mode 0o777/0o666 so the umask applies as to any folder or file the user creates:
    ``mkdtemp``/``mkstemp`` would give 0o700/0o600, and the rename would keep it.
    """
    prefix = f".{dest.name}.partial-"
    sweep_stale(prefix, dest.parent)
    for _ in range(1000):
        candidate = dest.parent / f"{prefix}{owner_tag()}{secrets.token_hex(6)}"
        try:
            if folder:
                os.mkdir(candidate, 0o777)
            else:
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary name beside {dest}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _write_archive(root: Path, manifest: Manifest, archive: Path) -> None:
    """A zip of the bundle whose bytes depend only on its content (sorted, fixed times/modes)."""
    with zipfile.ZipFile(archive, "w") as zf:
        present = [name for name in SIDECAR_NAMES if (root / name).is_file()]
        for name in sorted([*present, *manifest.files]):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.file_size = (root / name).stat().st_size
            with open(root / name, "rb") as source, zf.open(info, "w") as target:
                shutil.copyfileobj(source, target, _CHUNK)


def _check_dest(dest: Path, *, overwrite: bool, folder: bool) -> bool:
    """Whether ``dest`` exists; refuse it unless ``overwrite`` and it is a bundle of that form."""
    if not (dest.exists() or dest.is_symlink()):
        return False
    if not overwrite:
        raise EdgekitError(f"{dest} already exists (pass overwrite to replace it)")
    refuse_unowned(dest, owned=_is_bundle, what="bundle")  # never the current folder or a parent of it
    if not _is_bundle(dest) or dest.is_dir() != folder:
        raise EdgekitError(
            f"refusing to replace {dest}: it is not an edgekit bundle {'folder' if folder else 'archive'}"
        )
    return True


def _place(staged: Path, dest: Path, *, overwrite: bool) -> None:
    """Rename ``staged`` to ``dest``; an existing bundle is set aside first, then removed."""
    if not _check_dest(dest, overwrite=overwrite, folder=staged.is_dir()):
        os.rename(staged, dest)
        return
    if staged.is_file():
        os.replace(staged, dest)
        return
    aside = _temp_beside(dest, folder=True)
    os.rmdir(aside)
    os.rename(dest, aside)
    try:
        os.rename(staged, dest)
    except OSError:
        os.rename(aside, dest)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def save_bundle(
    dest: Path,
    manifest: Manifest,
    *,
    files: Mapping[str, Union[Path, bytes]] = _NOTHING,
    arrays: Mapping[str, np.ndarray] = _NOTHING,
    overwrite: bool = False,
) -> Path:
    """Write a complete bundle (folder, or one archive when ``dest`` ends in ``.edgekit``).

    ``files`` maps bundle paths to source files or bytes, ``arrays`` maps ``.npy`` bundle paths
    to arrays. The manifest's ``files`` is filled with the sha256 of each. Everything is written
    in a temporary folder beside ``dest`` and renamed into place; on failure nothing is left.
    """
    dest = Path(dest)
    _check_dest(dest, overwrite=overwrite, folder=not dest.name.endswith(ARCHIVE_SUFFIX))
    for path in [*files, *arrays]:
        check_relative_path(path, f"bundle {dest}")
        if path in SIDECAR_NAMES:
            raise EdgekitError(f"bundle {dest}: {path} is written by edgekit itself")
    if set(files) & set(arrays):
        raise EdgekitError(f"bundle {dest}: {sorted(set(files) & set(arrays))} given twice")
    written = set(files) | set(arrays)
    for path, source in files.items():
        if not isinstance(source, (bytes, bytearray, memoryview)) and not Path(source).is_file():
            raise EdgekitError(f"bundle {dest}: source of {path} is not a file: {source}")
    for path, array in arrays.items():
        if not path.endswith(".npy") or not isinstance(array, np.ndarray) or array.dtype.hasobject:
            raise EdgekitError(
                f"bundle {dest}: {path} must be a .npy path with a numeric array (object arrays would need pickle)"
            )
    for path in [*manifest.network.files, *manifest.head.arrays.values()]:
        if path not in written:
            raise EdgekitError(f"bundle {dest} would be incomplete: {path} is not among its files")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = _temp_beside(dest, folder=True)
    archive_tmp = None
    try:
        for path, source in files.items():
            (staged / path).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, (bytes, bytearray, memoryview)):
                (staged / path).write_bytes(source)
            else:
                shutil.copyfile(source, staged / path)
        for path, array in arrays.items():
            (staged / path).parent.mkdir(parents=True, exist_ok=True)
            with open(staged / path, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
        digests = {path: sha256_file(staged / path) for path in sorted(written)}
        sizes = {path: (staged / path).stat().st_size for path in sorted(written)}
        complete = Manifest.from_json(dataclasses.replace(manifest, files=digests, sizes=sizes).to_json())
        _write_manifest(staged, complete)
        if dest.name.endswith(ARCHIVE_SUFFIX):
            archive_tmp = _temp_beside(dest, folder=False)
            _write_archive(staged, complete, archive_tmp)
            _place(archive_tmp, dest, overwrite=overwrite)
        else:
            _place(staged, dest, overwrite=overwrite)
    except OSError as exc:
        raise EdgekitError(f"could not write bundle {dest}: {exc}") from None
    finally:
        _remove(staged)
        if archive_tmp is not None:
            _remove(archive_tmp)
    return dest


def _write_manifest(folder: Path, manifest: Manifest) -> None:
    """manifest.json and its detached digest, manifest.sha256."""
    data = manifest.to_json().encode("utf-8")
    (folder / MANIFEST_NAME).write_bytes(data)
    (folder / DIGEST_NAME).write_bytes(digest_line(data))


def load_bundle(
    path: Path,
    *,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    trusted_keys: Optional[Sequence[Any]] = None,
) -> Bundle:
    """Open and verify a bundle folder or ``.edgekit`` archive.

    An archive is extracted to a private temp folder, removed when the Bundle is closed (``close()``,
    or ``with``), garbage collected, or at exit. ``trusted_keys`` (public key files, raw 32-byte
    keys): refuse a bundle not signed by one of them, before anything but its manifest is read.
    """
    path = Path(path)
    if path.is_dir():
        return _verify(path, path, trusted_keys)
    if not path.is_file() or not zipfile.is_zipfile(path):
        raise EdgekitError(f"{path} is neither a bundle folder nor a {ARCHIVE_SUFFIX} archive")
    root = make_staging("edgekit-bundle-")  # private (0o700); swept if a killed process left it
    try:
        manifest, digest, signer = extract_archive(
            path, root, max_members=max_members, max_bytes=max_bytes, trusted_keys=trusted_keys
        )
        bundle = Bundle(root=root, manifest=manifest, origin=path, manifest_sha256=digest, signed_by=signer)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    object.__setattr__(bundle, "_cleanup", weakref.finalize(bundle, shutil.rmtree, str(root), True))
    return bundle


def unpack_bundle(
    archive: Path, dest: Path, *, max_members: int = DEFAULT_MAX_MEMBERS, max_bytes: int = DEFAULT_MAX_BYTES
) -> Path:
    """Extract and verify an archive into the new folder ``dest``."""
    archive, dest = Path(archive), Path(dest)
    _check_dest(dest, overwrite=False, folder=True)
    if not archive.is_file() or not zipfile.is_zipfile(archive):
        raise EdgekitError(f"{archive} is not a {ARCHIVE_SUFFIX} archive")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = _temp_beside(dest, folder=True)
    try:
        extract_archive(archive, staged, max_members=max_members, max_bytes=max_bytes)
        _place(staged, dest, overwrite=False)
    except OSError as exc:
        raise EdgekitError(f"could not unpack {archive} to {dest}: {exc}") from None
    finally:
        _remove(staged)
    return dest


def pack_bundle(folder: Path, archive: Path, *, overwrite: bool = False) -> Path:
    """Verify a bundle folder and write it as one deterministic ``.edgekit`` zip."""
    folder, archive = Path(folder), Path(archive)
    if not folder.is_dir():
        raise EdgekitError(f"{folder} is not a bundle folder")
    bundle = _verify(folder, folder)
    _check_dest(archive, overwrite=overwrite, folder=False)
    archive.parent.mkdir(parents=True, exist_ok=True)
    staged = _temp_beside(archive, folder=False)
    try:
        _write_archive(folder, bundle.manifest, staged)
        _place(staged, archive, overwrite=overwrite)
    except OSError as exc:
        raise EdgekitError(f"could not write {archive}: {exc}") from None
    finally:
        _remove(staged)
    return archive
