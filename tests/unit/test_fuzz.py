"""Fuzzing the device's inputs (Hypothesis): manifests, archives, arrays and image bytes.

Whatever comes in, ``edgekit.load``, ``unpack_bundle``, ``Detector.predict`` and the image decoders
either give a correct result or raise one ``EdgekitError`` with a one-line message, within a time
and address-space cap (a huge allocation is a ``MemoryError``, which fails the property).
Reproducible in CI: a fixed number of examples, derandomized, no per-example deadline.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import re
import resource
import shutil
import signal
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from fake_bundles import save_knn
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import edgekit
from edgekit.bundle import pack_bundle, unpack_bundle
from edgekit.errors import EdgekitError
from edgekit.manifest import digest_line
from edgekit.preprocess import MIN_SIDE, decode_image, read_image
from edgekit.runtime.detector import Prediction
from edgekit.serve import http

settings.register_profile(
    "edgekit-fuzz",
    max_examples=250,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
FUZZ = settings.get_profile("edgekit-fuzz")  # applied per test: other modules keep Hypothesis's defaults

#: address space a fuzzed call may add to the process before it counts as a huge allocation
HEADROOM = 1536 * 2**20
SECONDS_PER_CALL = 20

SIDE = 16
IMAGE = np.random.default_rng(3).integers(0, 255, (SIDE, SIDE, 3)).astype(np.uint8)


def _vm_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


@contextlib.contextmanager
def capped():
    """Run the body under an address-space cap (current size + HEADROOM) and a SIGALRM timeout."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_bytes() + HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)

    def timeout(*_: Any) -> None:
        raise TimeoutError(f"a fuzzed call ran over {SECONDS_PER_CALL} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    signal.alarm(SECONDS_PER_CALL)
    try:
        yield
    finally:
        signal.alarm(0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, previous)


def outcome(call: Callable[[], Any], *errors: type[BaseException]) -> Any:
    """The call's result, or the EdgekitError (or one of ``errors``) it raised, checked to be one line.

    Anything else (a traceback, MemoryError, a timeout) propagates and fails the property.
    """
    try:
        with capped(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return call()
    except (EdgekitError, *errors) as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message and "Traceback" not in message, repr(message)
        return exc


def check_prediction(result: Any) -> None:
    if isinstance(result, Prediction):
        assert isinstance(result.score, float) and 0.0 <= result.score <= 1.0
        assert isinstance(result.is_anomalous, bool) and math.isfinite(result.raw_score)
        assert result.anomaly_map.shape == (SIDE, SIDE) and np.isfinite(result.anomaly_map).all()


# --- a tiny bundle on the fake runtime ---------------------------------------------------------


@pytest.fixture(scope="module")
def area(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def folder(area: Path) -> Path:
    return save_knn(area / "bundle")


@pytest.fixture(scope="module")
def archive_bytes(folder: Path, area: Path) -> bytes:
    return pack_bundle(folder, area / "bundle.edgekit").read_bytes()


@pytest.fixture(scope="module")
def expected(folder: Path) -> tuple[Prediction, dict[str, bytes]]:
    return _load_and_read(folder)


@pytest.fixture(scope="module")
def detector(folder: Path):
    with edgekit.load(folder) as loaded:
        yield loaded


# --- 1. manifests --------------------------------------------------------------------------------


def _deep(depth: int) -> Any:
    value: Any = 0
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


WEIRD_NUMBERS = st.sampled_from(
    [
        0,
        -1,
        1,
        2,
        3,
        7,
        2**31,
        2**63,
        -(2**63),
        10**400,
        1e308,
        -1e308,
        1e-320,
        0.5,
        float("nan"),
        float("inf"),
        float("-inf"),
        True,
        False,
    ]
)
WEIRD_VALUES = st.one_of(
    WEIRD_NUMBERS,
    st.none(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "../x", "/etc/passwd", "x" * 200_000, "fake", "NCHW", "knn"]),
    st.lists(WEIRD_NUMBERS, max_size=4),
    st.dictionaries(st.text(max_size=5), WEIRD_NUMBERS, max_size=3),
    st.integers(min_value=30, max_value=900).map(_deep),
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in a JSON tree (keys and list indices), down to 6 levels."""
    found = [prefix] if prefix else []
    if len(prefix) >= 6:
        return found
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.extend(_paths(child, prefix + (key,)))
    return found


#: a placeholder value that becomes ``depth`` nested brackets in the manifest's text (json.dumps cannot
#: write that deep): the depth cap must refuse it before the parser recurses
DEEP_TEXT = st.integers(min_value=20, max_value=100_000).map(lambda depth: f"<deep:{depth}>")


def _manifest_text(data: dict) -> bytes:
    text = json.dumps(data)
    for depth in set(re.findall(r'"<deep:(\d+)>"', text)):
        text = text.replace(f'"<deep:{depth}>"', "[" * int(depth) + "]" * int(depth))
    return text.encode()


@st.composite
def mutated_manifests(draw, original: dict) -> dict:
    """The manifest with 1-3 mutations (mostly at leaves): a value replaced, a key removed or added."""
    data = copy.deepcopy(original)
    for _ in range(draw(st.sampled_from([1, 1, 2, 3]))):
        paths = _paths(data)
        leaves = [path for path in paths if not isinstance(_at(data, path), (dict, list))]
        path = draw(st.sampled_from(leaves if leaves and draw(st.booleans()) else paths))
        parent = _at(data, path[:-1])
        action = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(st.one_of(WEIRD_VALUES, DEEP_TEXT))
        elif action == "remove":
            del parent[path[-1]]
        else:
            target = parent[path[-1]] if isinstance(parent[path[-1]], (dict, list)) else parent
            if isinstance(target, dict):
                target[draw(st.text(min_size=1, max_size=8))] = draw(WEIRD_VALUES)
            else:
                target.append(draw(WEIRD_VALUES))
    return data


def _at(data: Any, path: tuple) -> Any:
    for key in path:
        data = data[key]
    return data


def _manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _copy(folder: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="fuzz-", dir=folder.parent)) / "bundle"
    shutil.copytree(folder, target)
    return target


def _load_and_predict(path: Path) -> Any:
    with edgekit.load(path) as loaded:
        return loaded.predict(IMAGE)


@FUZZ
@given(data=st.data(), redigest=st.booleans())
def test_a_mutated_manifest_loads_and_predicts_or_is_refused_in_one_line(folder: Path, data, redigest: bool) -> None:
    original = _manifest_of(folder)
    mutated = data.draw(mutated_manifests(original))
    copied = _copy(folder)
    try:
        text = _manifest_text(mutated)
        (copied / "manifest.json").write_bytes(text)
        if redigest:  # as anyone editing on purpose can: the schema checks must catch it
            (copied / "manifest.sha256").write_bytes(digest_line(text))
        result = outcome(lambda: _load_and_predict(copied))
        if not redigest and text != (folder / "manifest.json").read_bytes():
            assert isinstance(result, EdgekitError), "a manifest that does not match its digest was loaded"
        check_prediction(result)
    finally:
        shutil.rmtree(copied.parent)


# --- 2. archives ---------------------------------------------------------------------------------


def _write_temp(area: Path, data: bytes, suffix: str = ".edgekit") -> Path:
    handle, name = tempfile.mkstemp(suffix=suffix, dir=area)
    with open(handle, "wb") as out:
        out.write(data)
    return Path(name)


def _load_and_read(path: Path) -> tuple[Prediction, dict[str, bytes]]:
    """A prediction and the bytes of every file the loaded bundle lists."""
    with edgekit.load(path) as loaded:
        files = {name: loaded.bundle.path(name).read_bytes() for name in loaded.manifest.files}
        return loaded.predict(IMAGE), files


def _genuine(result: Any, expected: tuple[Prediction, dict[str, bytes]]) -> None:
    """A damaged archive that still loads must be the bundle itself: the digests cover every byte used."""
    if isinstance(result, tuple):
        check_prediction(result[0])
        assert result[1] == expected[1] and result[0].raw_score == expected[0].raw_score


def _load_and_unpack(path: Path, area: Path, expected: tuple[Prediction, dict[str, bytes]]) -> None:
    _genuine(outcome(lambda: _load_and_read(path)), expected)
    dest = Path(tempfile.mkdtemp(dir=area)) / "unpacked"
    try:
        result = outcome(lambda: unpack_bundle(path, dest))
        if not isinstance(result, EdgekitError):
            _genuine(outcome(lambda: _load_and_read(dest)), expected)
    finally:
        shutil.rmtree(dest.parent)


@FUZZ
@given(
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=6),
    keep=st.one_of(st.none(), st.floats(0, 1)),
)
def test_a_damaged_archive_loads_or_is_refused_in_one_line(
    archive_bytes: bytes, area: Path, expected, flips, keep
) -> None:
    damaged = bytearray(archive_bytes)
    for where, mask in flips:
        damaged[int(where * len(damaged))] ^= mask
    if keep is not None:
        damaged = damaged[: int(keep * len(damaged))]
    path = _write_temp(area, bytes(damaged))
    try:
        _load_and_unpack(path, area, expected)
    finally:
        path.unlink()


MEMBER_NAMES = st.one_of(
    st.sampled_from(
        [
            "../evil",
            "/etc/passwd",
            "head/../../x",
            "a/./b",
            "C:\\x",
            "\\\\server\\x",
            "head/",
            "manifest.json",
            "net.json",
            "head/memory_bank.npy",
            "manifest.sig",
            "..",
            ".",
            "x" * 300,
            "dir/",
            "nul\x00byte",
        ]
    ),
    st.text(alphabet="ab./\\:-_", min_size=1, max_size=12),
)


def _patch_sizes(data: bytes, name: str, size: int) -> bytes:
    """Declare ``size`` for member ``name`` in its local and central headers (compressed data unchanged)."""
    out = bytearray(data)
    raw = name.encode()
    start = 0
    while (at := out.find(b"PK\x03\x04", start)) >= 0:
        if out[at + 30 : at + 30 + len(raw)] == raw:
            out[at + 22 : at + 26] = struct.pack("<I", size)
        start = at + 4
    start = 0
    while (at := out.find(b"PK\x01\x02", start)) >= 0:
        if out[at + 46 : at + 46 + len(raw)] == raw:
            out[at + 24 : at + 28] = struct.pack("<I", size)
        start = at + 4
    return bytes(out)


@FUZZ
@given(
    extra=st.lists(st.tuples(MEMBER_NAMES, st.binary(max_size=64)), max_size=3),
    drop=st.sets(st.integers(0, 5), max_size=2),
    sizes=st.lists(st.tuples(st.integers(0, 5), st.sampled_from([0, 1, 2**20, 2**31, 2**32 - 1])), max_size=2),
    stored=st.booleans(),
    tamper=st.one_of(st.none(), st.tuples(st.integers(0, 5), st.integers(0, 2**20), st.integers(1, 255))),
)
def test_an_archive_with_odd_members_loads_or_is_refused_in_one_line(
    archive_bytes: bytes, area: Path, expected, extra, drop, sizes, stored: bool, tamper
) -> None:
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as zf:
        members = [(info.filename, zf.read(info)) for info in zf.infolist()]
    if tamper:  # one byte of a member changed, its size and CRC consistent: only the sha256 list can tell
        index, where, mask = tamper
        name, content = members[index % len(members)]
        changed = bytearray(content)
        changed[where % len(changed)] ^= mask
        members[index % len(members)] = (name, bytes(changed))
    members = [member for index, member in enumerate(members) if index not in drop] + extra
    buffer = io.BytesIO()
    with (
        warnings.catch_warnings(),
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED) as zf,
    ):
        warnings.simplefilter("ignore")  # duplicate names are part of the fuzz
        for name, content in members:
            zf.writestr(name, content)
    data = buffer.getvalue()
    for index, size in sizes:
        if members:
            data = _patch_sizes(data, members[index % len(members)][0], size)
    path = _write_temp(area, data)
    try:
        _load_and_unpack(path, area, expected)
    finally:
        path.unlink()


# --- 3. arrays to predict ------------------------------------------------------------------------

DTYPES = [
    np.uint8,
    np.int8,
    np.uint16,
    np.int32,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
    np.bool_,
    np.complex64,
    np.dtype("U1"),
    np.dtype(object),
]


@st.composite
def huge_arrays(draw) -> np.ndarray:
    """Images whose shape is huge but whose memory is one element (broadcast: stride 0)."""
    dtype = draw(st.sampled_from([np.uint8, np.float32, np.int16]))
    sides = st.sampled_from([1, 2, 16, 1_000, 100_000, 3_000_000])
    shape = (draw(sides), draw(sides)) + tuple(draw(st.lists(st.sampled_from([1, 3, 4]), max_size=1)))
    assume(math.prod(shape) * np.dtype(dtype).itemsize < 2**60)  # numpy's own limit
    return np.broadcast_to(np.zeros((1,) * len(shape), dtype=dtype), shape)


@st.composite
def small_arrays(draw) -> np.ndarray:
    """Arrays of any dtype, 0-4 dims, zeros in dims, NaN/inf, non-contiguous views."""
    dtype = np.dtype(draw(st.one_of(st.just(np.uint8), st.sampled_from(DTYPES))))
    if draw(st.booleans()):  # image-shaped: the values and the layout are what is fuzzed
        shape = (draw(st.sampled_from([2, 16, 17, 40])), draw(st.sampled_from([2, 16, 17, 40])))
        shape += tuple(draw(st.lists(st.sampled_from([1, 3, 4]), max_size=1)))
    else:
        shape = tuple(draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 5, 16, 17, 40]), max_size=4)))
    ndim = len(shape)
    kind = draw(st.sampled_from(["random", "random", "special", "view"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    elif dtype.kind in "fc":
        array = rng.random(shape).astype(dtype)
        if kind == "special" and array.size:
            array.flat[rng.integers(0, array.size)] = draw(st.sampled_from([np.nan, np.inf, -np.inf, -0.0, 1.0001]))
    elif dtype.kind == "b":
        array = rng.random(shape) > 0.5
    else:
        array = np.full(shape, "1" if dtype.kind == "U" else None, dtype=dtype)
    if kind == "view" and ndim >= 2:
        array = draw(
            st.sampled_from([lambda a: a[::2], lambda a: a[:, ::-1], lambda a: np.swapaxes(a, 0, 1), np.asfortranarray])
        )(array)
    return array


def arrays() -> st.SearchStrategy[np.ndarray]:
    return st.one_of(small_arrays(), huge_arrays())


@FUZZ
@given(array=arrays(), color=st.sampled_from(["rgb", "bgr"]))
def test_an_array_is_scored_or_refused_in_one_line(detector, array: np.ndarray, color: str) -> None:
    result = outcome(lambda: detector.predict(array, color=color))
    check_prediction(result)
    well_formed = (
        array.dtype == np.uint8
        and array.ndim in (2, 3)
        and min(array.shape[:2]) >= MIN_SIDE
        and (array.ndim == 2 or array.shape[2] in (1, 3, 4))
        and array.shape[0] * array.shape[1] <= detector.max_pixels
    )
    if well_formed:
        assert isinstance(result, Prediction), result
    if (
        array.dtype.kind == "f"
        and 0 < array.nbytes < 2**26
        and not (np.isfinite(array).all() and 0 <= array.min() <= array.max() <= 1)
    ):
        assert isinstance(result, EdgekitError), "a float image outside [0, 1] (or NaN/inf) was scored"
    if isinstance(result, Prediction) and array.nbytes < 2**26:  # a view scores as its contiguous copy
        again = detector.predict(np.ascontiguousarray(array), color=color)
        assert again.raw_score == result.raw_score


# --- 4. image bytes ------------------------------------------------------------------------------


def _encode(fmt: str, width: int, height: int, mode: str) -> bytes:
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(width * height).integers(0, 255, (height, width, 3)).astype(np.uint8))
    image = image.convert(mode) if fmt != "JPEG" or mode in ("RGB", "L") else image
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _claim_size(data: bytes, fmt: str, width: int, height: int) -> bytes:
    """Rewrite the header's width and height (the pixels stay as they are)."""
    out = bytearray(data)
    if fmt == "PNG":
        out[16:24] = struct.pack(">II", width, height)
    elif fmt == "BMP":
        out[18:26] = struct.pack("<II", width, height)  # a negative height (top-down) included
    elif fmt == "GIF":
        out[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    elif fmt == "JPEG":
        at = out.find(b"\xff\xc0")
        if at >= 0:
            out[at + 5 : at + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
    elif fmt == "TIFF":  # little-endian TIFF, first IFD: tags 256 (width) and 257 (height)
        offset = struct.unpack("<I", out[4:8])[0]
        count = struct.unpack("<H", out[offset : offset + 2])[0]
        for entry in range(count):
            at = offset + 2 + 12 * entry
            tag, kind = struct.unpack("<HH", out[at : at + 4])
            if tag in (256, 257):
                value = width if tag == 256 else height
                out[at + 8 : at + 12] = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value & 0xFFFF, 0)
    return bytes(out)


@st.composite
def image_bytes(draw) -> bytes:
    """Random bytes, or a tiny encoded image with a size claimed in its header, flipped bytes, a cut."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=512))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "TIFF", "BMP", "GIF"]))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "I;16", "F", "1", "P"]))
    assume(not (fmt == "JPEG" and mode not in ("RGB", "L")) and not (fmt == "GIF" and mode in ("I;16", "F")))
    assume(not (fmt == "BMP" and mode in ("I;16", "F")) and not (fmt == "PNG" and mode == "F"))
    data = _encode(fmt, draw(st.integers(1, 24)), draw(st.integers(1, 24)), mode)
    if draw(st.booleans()):
        sides = st.sampled_from([0, 1, 2, 65535, 100_000, 2**31 - 1, 2**32 - 1])
        data = _claim_size(data, fmt, draw(sides), draw(sides))
    damaged = bytearray(data)
    for where, mask in draw(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=3)):
        damaged[int(where * len(damaged))] ^= mask
    if draw(st.booleans()):
        damaged = damaged[: draw(st.integers(0, len(damaged)))]
    return bytes(damaged)


def _image_ok(result: Any, channels: int) -> None:
    if isinstance(result, np.ndarray):
        assert result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == channels
        assert min(result.shape[:2]) >= MIN_SIDE and result.flags.c_contiguous


@FUZZ
@given(data=image_bytes(), channels=st.sampled_from([1, 3]))
def test_image_bytes_decode_or_are_refused_in_one_line(area: Path, data: bytes, channels: int) -> None:
    _image_ok(outcome(lambda: decode_image(data, channels)), channels)
    path = _write_temp(area, data, suffix=".img")
    try:
        _image_ok(outcome(lambda: read_image(path, channels)), channels)
    finally:
        path.unlink()
    result = outcome(lambda: http.decode_image(data, channels=channels, max_pixels=4_000_000), http.HttpError)
    if isinstance(result, http.HttpError):
        assert result.status in (413, 415, 422), result.status
    _image_ok(result, channels)
