"""The bundle manifest: a versioned, strict JSON schema made of frozen dataclasses, and what covers it.

Everything the device needs to reproduce a score is in the manifest, and nothing is guessed or
unpickled: construction validates and normalises every field (lists become tuples, numpy scalars
become Python numbers), and parsing refuses invalid JSON, duplicate keys, missing, unknown or
mistyped fields and unknown schema versions, naming the field at fault. Standard library + numpy
only: the device imports this.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.preprocess import InputSpec

__all__ = [
    "SCHEMA_VERSION",
    "MANIFEST_NAME",
    "DIGEST_NAME",
    "SIGNATURE_NAME",
    "SIDECAR_NAMES",
    "MAX_MANIFEST_BYTES",
    "MAX_SIDECAR_BYTES",
    "NetworkSpec",
    "HeadSpec",
    "Decision",
    "Manifest",
    "check_relative_path",
    "digest_line",
    "parse_manifest",
    "check_listing",
    "check_size",
]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: Caps checked before a manifest is parsed: its size, and how deeply its JSON may nest.
MAX_MANIFEST_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
#: The manifest's detached digest: one ``sha256sum`` line, checked before the manifest is parsed.
DIGEST_NAME = "manifest.sha256"
#: Ed25519 signatures of the manifest's digest (optional; written by ``edgekit sign``).
SIGNATURE_NAME = "manifest.sig"
#: Files a bundle holds besides those its manifest lists.
SIDECAR_NAMES = (MANIFEST_NAME, DIGEST_NAME, SIGNATURE_NAME)
#: Size cap of the digest and signature files, checked before they are read.
MAX_SIDECAR_BYTES = 64 << 10
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


class _FieldError(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"field '{where}' {problem}")


def _kind(value: Any) -> str:
    names = {bool: "a boolean", str: "a string", list: "a list", dict: "an object", type(None): "null"}
    if type(value) in names:
        return names[type(value)]
    return "a number" if isinstance(value, (int, float)) else type(value).__name__


def _json_value(value: Any, where: str) -> Any:
    """A deep copy of ``value`` as plain JSON types (tuples → lists, numpy scalars → Python)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _FieldError(where, f"holds {value}, which JSON cannot carry")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise _FieldError(where, "must have string keys")
        return {key: _json_value(item, f"{where}.{key}") for key, item in value.items()}
    raise _FieldError(where, f"holds {type(value).__name__}, which is not JSON")


def _json_depth(text: str) -> int:
    """How deeply the JSON text's arrays and objects nest, counted without parsing (strings skipped)."""
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def check_relative_path(path: Any, where: str = "path") -> str:
    """Refuse bundle paths that could leave the bundle: absolute, ``..``, backslashes, drives."""
    if not isinstance(path, str) or not path:
        raise EdgekitError(f"{where}: a bundle path must be a non-empty string, not {path!r}")
    parts = path.split("/")
    if "\\" in path or ":" in path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise EdgekitError(f"{where}: {path!r} is not a plain relative path inside the bundle")
    return path


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a field type, converting JSON forms (list → tuple, int → float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if not isinstance(value, dict):
            raise _FieldError(where, f"must be an object, not {_kind(value)}")
        return _build(hint, value, where + ".")
    if hint is Any:
        return _json_value(value, where)
    if hint is str:
        if not isinstance(value, str):
            raise _FieldError(where, f"must be a string, not {_kind(value)}")
        return str(value)
    if hint is int:
        if isinstance(value, np.integer):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _FieldError(where, f"must be an integer, not {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise _FieldError(where, f"must be a number, not {_kind(value)}")
        if not math.isfinite(value):
            raise _FieldError(where, f"must be finite, not {value}")
        return float(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _FieldError(where, f"must be a list, not {_kind(value)}")
        return tuple(_coerce(item, args[0], f"{where}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _FieldError(where, f"must be an object, not {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise _FieldError(where, "must have string keys")
        return {key: _coerce(item, args[1], f"{where}.{key}") for key, item in value.items()}
    raise TypeError(f"unsupported manifest field type {hint!r}")  # a bug here, not user input


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    """Construct ``cls`` from a mapping that names every field without a default, and nothing else
    (fields added later have defaults, so older bundles still parse)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise _FieldError(f"{prefix}{key}", "is unknown")
    optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    optional |= {f.name for f in dataclasses.fields(cls) if f.default_factory is not dataclasses.MISSING}
    for name in names:
        if name not in values and name not in optional:
            raise _FieldError(f"{prefix}{name}", "is missing")
    kwargs = {name: _coerce(values[name], hints[name], prefix + name) for name in names if name in values}
    try:
        return cls(**kwargs)
    except EdgekitError as exc:
        raise _FieldError(prefix.rstrip("."), f"is invalid: {exc}") from None


def _normalise(instance: Any) -> None:
    """__post_init__ of the contract dataclasses: validate and convert every field in place."""
    hints = typing.get_type_hints(type(instance))
    try:
        for f in dataclasses.fields(instance):
            where = f"{type(instance).__name__}.{f.name}"
            converted = _coerce(getattr(instance, f.name), hints[f.name], where)
            object.__setattr__(instance, f.name, converted)
    except _FieldError as exc:
        raise EdgekitError(str(exc)) from None


@dataclass(frozen=True)
class NetworkSpec:
    """The exported network: its format, its files (files[0] is what the runtime opens), I/O names."""

    format: str
    files: tuple[str, ...]
    input_name: str
    output_names: tuple[str, ...]

    def __post_init__(self) -> None:
        _normalise(self)
        if not self.files or not self.output_names:
            raise EdgekitError("network.files and network.output_names must not be empty")
        for index, path in enumerate(self.files):
            check_relative_path(path, f"network.files[{index}]")


@dataclass(frozen=True)
class HeadSpec:
    """The numpy head: its kind, JSON parameters and array name → relative .npy path."""

    kind: str
    params: dict[str, Any]
    arrays: dict[str, str]

    def __post_init__(self) -> None:
        _normalise(self)
        for name, path in self.arrays.items():
            check_relative_path(path, f"head.arrays.{name}")
            if not path.endswith(".npy"):
                raise EdgekitError(f"head.arrays.{name}: {path!r} must be a .npy file")


@dataclass(frozen=True)
class Decision:
    """Thresholds and normalisation, fitted on the exported model; ``raw > threshold`` is anomalous.

    Normalised scores map a centre (raw score of a typical normal image) to 0.0 and the
    threshold to 0.5.
    """

    image_threshold: float  # on the raw image score
    pixel_threshold: float  # on raw anomaly-map values
    image_center: float
    pixel_center: float
    method: str  # how they were fitted, in words
    fitted_on: int  # number of held-out normal images used
    rule: str = "bound"  # edgekit.runtime.decision.ThresholdRule
    fitted_with: dict[str, Any] = field(default_factory=dict)  # runtime, its version, machine
    validation: dict[str, Any] = field(default_factory=dict)  # edgekit threshold: data, fingerprint, counts

    def __post_init__(self) -> None:
        _normalise(self)


@dataclass(frozen=True)
class Manifest:
    """Everything a device needs to reproduce a score; ``files`` maps path → sha256 hex."""

    schema_version: int
    edgekit_version: str
    model: str  # "patchcore", ...
    backbone: str
    target: str  # "x86", "rpi4", ...
    runtime: str  # "openvino" | "onnxruntime" | "litert" | "fake"
    device: str  # "CPU", "GPU", ...
    precision: str  # "fp32" | "fp16" | "int8"
    input: InputSpec
    network: NetworkSpec
    head: HeadSpec
    decision: Decision
    source: dict[str, Any]  # training-run fingerprint, dataset, created time, ...
    export: dict[str, Any]  # what the export did: precision, recipe, calibration count, ...
    files: dict[str, str] = field(default_factory=dict)  # every file but manifest.json → sha256
    sizes: dict[str, int] = field(default_factory=dict)  # the same files → size in bytes

    def __post_init__(self) -> None:
        _normalise(self)
        for path, digest in self.files.items():
            check_relative_path(path, "files")
            if path == MANIFEST_NAME:
                raise EdgekitError(f"files: {MANIFEST_NAME} cannot list itself")
            if len(digest) != 64 or digest.strip("0123456789abcdef"):
                raise EdgekitError(f"files.{path}: {digest!r} is not a sha256 hex digest")
        for path, size in self.sizes.items():
            if path not in self.files:
                raise EdgekitError(f"sizes.{path}: not a file the manifest lists")
            if size < 0:
                raise EdgekitError(f"sizes.{path}: {size} is not a size")

    def to_json(self) -> str:
        """The manifest as JSON: sorted keys, indent 2, floats written with repr (exact)."""
        plain = dataclasses.asdict(self)
        return json.dumps(_json_value(plain, "manifest"), sort_keys=True, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = MANIFEST_NAME) -> "Manifest":
        """Parse strictly: invalid JSON, missing/unknown/mistyped fields, unknown schema → error."""

        def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            result = dict(pairs)
            if len(result) != len(pairs):
                twice = next(key for key, _ in pairs if [k for k, _ in pairs].count(key) > 1)
                raise EdgekitError(f"{source}: key '{twice}' appears twice")
            return result

        def no_constants(name: str) -> Any:
            raise EdgekitError(f"{source}: {name} is not valid JSON")

        if len(text) > MAX_MANIFEST_BYTES:
            raise EdgekitError(f"{source}: larger than {MAX_MANIFEST_BYTES} characters; refused")
        if _json_depth(text) > MAX_JSON_DEPTH:
            raise EdgekitError(f"{source}: nested deeper than {MAX_JSON_DEPTH} levels; refused")
        try:
            data = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
            raise EdgekitError(f"{source}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise EdgekitError(f"{source}: must hold a JSON object, not {_kind(data)}")
        version = data.get("schema_version")
        if "schema_version" not in data:
            raise EdgekitError(f"{source}: field 'schema_version' is missing")
        if isinstance(version, bool) or not isinstance(version, int):
            raise EdgekitError(f"{source}: field 'schema_version' must be an integer")
        if version > SCHEMA_VERSION:
            raise EdgekitError(
                f"{source}: schema_version {version} is newer than this edgekit "
                f"understands ({SCHEMA_VERSION}); upgrade edgekit"
            )
        if version != SCHEMA_VERSION:
            raise EdgekitError(f"{source}: unknown schema_version {version}")
        try:
            return _build(cls, data, "")
        except _FieldError as exc:
            raise EdgekitError(f"{source}: {exc}") from None


def check_listing(manifest: Manifest, name: str) -> set[str]:
    """The files the manifest lists, after checking it names a size for each and lists all it uses."""
    listed = set(manifest.files)
    if listed & set(SIDECAR_NAMES):
        raise EdgekitError(
            f"bundle {name}: its manifest lists {sorted(listed & set(SIDECAR_NAMES))[0]}, "
            "which only edgekit writes; refused"
        )
    for path in [*manifest.network.files, *manifest.head.arrays.values()]:
        if path not in listed:
            raise EdgekitError(f"bundle {name} is incomplete: {path} is not listed in its manifest")
    for path in sorted(listed - set(manifest.sizes)):
        raise EdgekitError(f"bundle {name}: its manifest gives no size for {path}")
    return listed


def check_size(path: str, size: int, manifest: Manifest, name: str) -> None:
    if size != manifest.sizes[path]:
        raise EdgekitError(
            f"bundle {name} is tampered or damaged: {path} is {size} bytes, its manifest says {manifest.sizes[path]}"
        )


def digest_line(manifest_bytes: bytes) -> bytes:
    """The content of ``manifest.sha256`` for these manifest bytes (``sha256sum`` format)."""
    return f"{hashlib.sha256(manifest_bytes).hexdigest()}  {MANIFEST_NAME}\n".encode()


def parse_manifest(
    manifest_bytes: bytes,
    digest_bytes: Optional[bytes],
    name: str,
    *,
    signatures: Optional[bytes] = None,
    trusted_keys: Optional[Sequence[Any]] = None,
) -> tuple[Manifest, str, Optional[str]]:
    """Check the manifest against its detached digest (and, with ``trusted_keys``, its signature),
    then parse it: (manifest, its sha256 hex, the signer or None).

    ``digest_bytes`` None means the bundle has no ``manifest.sha256``: refused, as damage.
    """
    if digest_bytes is None:
        raise EdgekitError(
            f"bundle {name} is tampered or damaged: it has no {DIGEST_NAME} "
            f"(or was made by an edgekit older than the manifest digest: export it again)"
        )
    if digest_bytes.strip() != digest_line(manifest_bytes).strip():
        raise EdgekitError(
            f"bundle {name} is tampered or damaged: {MANIFEST_NAME} does not match its digest in {DIGEST_NAME}"
        )
    digest = hashlib.sha256(manifest_bytes).hexdigest()
    signer = None
    if trusted_keys is not None:
        from edgekit.signing import check_signature

        key = check_signature(signatures, digest, trusted_keys, name)
        signer = f"{key.key_id} ({key.label})"
    try:
        text = manifest_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise EdgekitError(f"{name}/{MANIFEST_NAME}: not UTF-8 text") from None
    manifest = Manifest.from_json(text, source=f"{name}/{MANIFEST_NAME}")
    return manifest, digest, signer
