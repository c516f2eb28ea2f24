"""Images the runtime refuses or converts by rule: empty, degenerate, float, oversized."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from edgekit.errors import EdgekitError
from edgekit.preprocess import DEFAULT_MAX_PIXELS, ImageRejected, InputSpec, decode_image, prepare, read_image

SPEC = InputSpec(height=8, width=8, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but which holds no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((0, 0), np.uint8),
        np.zeros((0, 5, 3), np.uint8),
        np.zeros((1, 1), np.uint8),
        np.full((1, 1, 3), 128, np.uint8),
        np.zeros((1, 40), np.uint8),
        np.zeros((0, 0), np.float32),
    ],
    ids=["empty-2d", "empty-rgb", "1x1-grey", "1x1-rgb", "1x40", "empty-float"],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_empty_and_degenerate_arrays_are_refused_as_too_small(array, channels):
    with pytest.raises(ImageRejected, match="too small|empty") as caught:
        read_image(array, channels)
    assert caught.value.reason == "too-small"


def test_one_pixel_png_file_is_refused(tmp_path):
    path = tmp_path / "dot.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(path)
    with pytest.raises(ImageRejected, match="too small: 1x1"):
        read_image(path)
    with pytest.raises(ImageRejected, match="too small"):
        prepare([path], SPEC)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_arrays_in_unit_range_score_as_their_uint8_image(dtype):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)
    as_float = (pixels / 255.0).astype(dtype)
    np.testing.assert_array_equal(read_image(as_float), pixels)
    np.testing.assert_array_equal(prepare([as_float], SPEC), prepare([pixels], SPEC))


@pytest.mark.parametrize(
    "values", [[0.0, 255.0], [-0.1, 0.5], [0.0, np.nan], [0.0, np.inf]], ids=["0-255", "negative", "nan", "inf"]
)
def test_float_arrays_outside_unit_range_are_refused(values):
    array = np.full((8, 8), values[0], np.float32)
    array[0, 0] = values[1]
    with pytest.raises(EdgekitError, match=r"float image must hold finite values in \[0, 1\]"):
        read_image(array)


def test_other_dtypes_are_refused_with_the_rule():
    with pytest.raises(EdgekitError, match=r"uint8 \(0-255\) or float in \[0, 1\], not uint16"):
        read_image(np.zeros((8, 8), np.uint16))


def test_float32_tiff_in_unit_range_is_not_black(tmp_path):
    ramp = np.tile(np.linspace(0.0, 1.0, 32, dtype=np.float32), (16, 1))
    path = tmp_path / "ramp.tiff"
    Image.fromarray(ramp, mode="F").save(path)
    got = read_image(path, channels=1)[:, :, 0]
    np.testing.assert_array_equal(got, np.rint(ramp * 255).astype(np.uint8))
    assert got.max() == 255


def test_float32_tiff_outside_unit_range_is_refused(tmp_path):
    path = tmp_path / "raw.tiff"
    Image.fromarray(np.full((8, 8), 200.0, np.float32), mode="F").save(path)
    with pytest.raises(EdgekitError, match=r"\[0, 1\]"):
        read_image(path)


@pytest.mark.parametrize("side", [12000, 20000])
def test_oversized_file_is_refused_from_its_header_without_decoding(tmp_path, side):
    path = tmp_path / f"huge-{side}.png"
    path.write_bytes(png_header_only(side, side))  # no pixels at all: decoding would fail otherwise
    with pytest.raises(ImageRejected, match="megapixels") as caught:
        read_image(path)
    assert caught.value.reason == "too-large"
    with pytest.raises(ImageRejected, match="megapixels"):
        decode_image(path.read_bytes())


def test_pixel_cap_is_a_parameter_and_defaults_to_50_megapixels(tmp_path):
    assert DEFAULT_MAX_PIXELS == 50_000_000
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(path)
    assert read_image(path).shape == (100, 100, 3)
    with pytest.raises(ImageRejected, match=r"100x100 \(0\.0 megapixels\); the limit is 0\.005 megapixels"):
        read_image(path, max_pixels=5000)


def test_unreadable_and_truncated_files_have_their_own_reasons(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image" * 10)
    with pytest.raises(ImageRejected, match="not a readable image") as caught:
        read_image(junk)
    assert caught.value.reason == "unreadable"
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    with pytest.raises(ImageRejected, match="truncated or corrupt") as caught:
        decode_image(buffer.getvalue()[:2000])
    assert caught.value.reason == "corrupt"


def test_a_broadcast_array_over_the_pixel_cap_is_refused_before_any_copy():
    """Found by the fuzzer: a 7000x100000 broadcast view (one byte of memory) was expanded to 2 GiB."""
    huge = np.broadcast_to(np.zeros((1, 1), np.uint8), (7000, 100_000))
    with pytest.raises(ImageRejected, match="7.*megapixels.*the limit is 50 megapixels") as info:
        read_image(huge, 3)
    assert info.value.reason == "too-large"
    with pytest.raises(ImageRejected, match="the limit is 0.0001 megapixels"):
        read_image(np.zeros((11, 10), np.uint8), 3, max_pixels=100)
    assert read_image(np.zeros((10, 10), np.uint8), 3, max_pixels=100).shape == (10, 10, 3)


# --- geometry: region of interest, stretch / crop / letterbox -------------------------------------------


def _two_colour(height: int = 40, width: int = 80) -> np.ndarray:
    """Left quarter red, the middle half green, right quarter blue."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 4] = (255, 0, 0)
    image[:, width // 4 : 3 * width // 4] = (0, 255, 0)
    image[:, 3 * width // 4 :] = (0, 0, 255)
    return image


GREY = dict(channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize="pil-nearest")


def test_crop_keeps_the_centre_and_stretch_squeezes_everything():
    from edgekit.preprocess import fit_to

    image = _two_colour()
    cropped = fit_to(image, InputSpec(height=16, width=16, fit="crop", **GREY))
    assert (cropped == (0, 255, 0)).all()  # the centre 40x40 of 40x80 is all green
    stretched = fit_to(image, InputSpec(height=16, width=16, **GREY))
    assert (stretched[:, 0] == (255, 0, 0)).all() and (stretched[:, -1] == (0, 0, 255)).all()


def test_letterbox_keeps_the_aspect_and_pads_with_the_mean_the_network_sees_as_zero():
    from edgekit.preprocess import fit_to

    spec = InputSpec(height=16, width=16, fit="letterbox", **GREY)
    boxed = fit_to(_two_colour(), spec)
    assert (boxed[:4] == 128).all() and (boxed[-4:] == 128).all()  # 8 image rows in the middle
    assert (boxed[4:12, 0] == (255, 0, 0)).all() and (boxed[4:12, -1] == (0, 0, 255)).all()
    batch = prepare([_two_colour()], spec)
    assert np.abs(batch[0, :, :4]).max() < 0.01  # padding ≈ 0 after normalisation


def test_roi_is_cut_first_and_recorded_in_the_spec():
    from edgekit.preprocess import fit_to, parse_roi

    spec = InputSpec(height=8, width=8, roi=parse_roi("60,0,20,40"), **GREY)
    assert (fit_to(_two_colour(), spec) == (0, 0, 255)).all()
    with pytest.raises(EdgekitError, match="region of interest 60,0,40,40 does not fit in a 80x40 image"):
        fit_to(_two_colour(), InputSpec(height=8, width=8, roi=(60, 0, 40, 40), **GREY))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fit": "pad"}, "input fit must be one of stretch, crop, letterbox"),
        ({"roi": (0, 0, 10)}, "input roi must be x,y,width,height"),
        ({"roi": (-1, 0, 10, 10)}, "input roi must be x,y,width,height"),
        ({"roi": (0, 0, 1, 10)}, "sides >= 2"),
    ],
)
def test_bad_geometry_is_one_line(kwargs, message):
    with pytest.raises(EdgekitError, match=message):
        InputSpec(height=8, width=8, **GREY, **kwargs)


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "", "1,2,3,4,5"])
def test_roi_text_is_parsed_or_refused(text):
    from edgekit.preprocess import parse_roi

    with pytest.raises(EdgekitError, match="--roi must be x,y,width,height"):
        parse_roi(text)


def test_masks_follow_the_images_geometry(tmp_path):
    from edgekit.data.datasets import Dataset, Sample

    mask = np.zeros((40, 80), np.uint8)
    mask[:, 60:] = 255  # the blue quarter
    Image.fromarray(mask).save(tmp_path / "m.png")
    sample = Sample(tmp_path / "x.png", 1, "blue", tmp_path / "m.png")
    dataset = Dataset("d", tmp_path, "folder", (), (sample,))
    spec = InputSpec(height=8, width=8, roi=(40, 0, 40, 40), **GREY)
    assert dataset.read_mask(sample, 8, 8, spec=spec)[:, 4:].all()
    assert not dataset.read_mask(sample, 8, 8, spec=spec)[:, :4].any()
    boxed = dataset.read_mask(sample, 8, 8, spec=InputSpec(height=8, width=8, fit="letterbox", **GREY))
    assert not boxed[:2].any() and boxed[2:6, 6:].all()


# --- tiles: a grid of network inputs per image, stitched back ---------------------------------------------


def test_tiles_cover_the_fitted_image_with_the_overlap_asked_for():
    spec = InputSpec(height=8, width=8, tiles=(2, 3), tile_overlap=2, **GREY)
    assert spec.tile_count == 6 and spec.map_size == (14, 20)  # 8 + 6, 8 + 6 + 6
    assert spec.tile_origins() == [(0, 0), (0, 6), (0, 12), (6, 0), (6, 6), (6, 12)]
    image = np.arange(14 * 20, dtype=np.uint8).reshape(14, 20, 1).repeat(3, axis=2)
    batch = prepare([image, image], spec)  # already at map size: the fit leaves it as it is
    assert batch.shape == (12, 3, 8, 8)
    whole = prepare([image], InputSpec(height=14, width=20, **GREY))[0]
    for tile, (top, left) in enumerate(spec.tile_origins()):
        assert np.array_equal(batch[tile], whole[:, top : top + 8, left : left + 8])
        assert np.array_equal(batch[6 + tile], batch[tile])


def test_stitching_takes_the_worst_tile_and_the_largest_value_where_tiles_overlap():
    from edgekit.preprocess import stitch

    spec = InputSpec(height=8, width=8, tiles=(1, 2), tile_overlap=4, **GREY)  # map 8 x 12
    maps = np.stack([np.full((8, 8), value) for value in (1.0, 3.0, 5.0, 2.0)])
    scores, stitched = stitch(np.array([1.0, 3.0, 5.0, 2.0]), maps, spec)
    assert scores.tolist() == [3.0, 5.0] and stitched.shape == (2, 8, 12)
    assert (stitched[0, :, :4] == 1.0).all() and (stitched[0, :, 4:] == 3.0).all()
    assert (stitched[1, :, :8] == 5.0).all() and (stitched[1, :, 8:] == 2.0).all()
    untiled = InputSpec(height=8, width=8, **GREY)
    assert stitch(scores, stitched, untiled)[1] is stitched
    with pytest.raises(EdgekitError, match="3 network outputs do not make whole images of 2 tiles"):
        stitch(np.zeros(3), np.zeros((3, 8, 8)), spec)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tiles": (2,)}, "input tiles must be rows,columns"),
        ({"tiles": (0, 2)}, "from 1 to 16 each"),
        ({"tiles": (17, 1)}, "from 1 to 16 each"),
        ({"tiles": (2, 2), "tile_overlap": 5}, "from 0 to 4 \\(half a tile\\)"),
        ({"tile_overlap": -1}, "tile_overlap must be a whole number"),
        ({"side": 512, "tiles": (9, 2)}, "input tiles 9x2 of 512x512 cover 1024x4608 pixels; at most 4096"),
    ],
)
def test_bad_tiles_are_one_line(kwargs, message):
    side = kwargs.pop("side", 8)
    with pytest.raises(EdgekitError, match=message):
        InputSpec(height=side, width=side, **GREY, **kwargs)


@pytest.mark.parametrize("text, tiles", [("4x4", (4, 4)), ("2X3", (2, 3)), ("3,1", (3, 1))])
def test_tiles_text_is_parsed(text, tiles):
    from edgekit.preprocess import parse_tiles

    assert parse_tiles(text) == tiles
    with pytest.raises(EdgekitError, match="--tiles must be rows x columns"):
        parse_tiles("4x4x4")


def test_masks_are_cut_to_the_grid_the_maps_cover(tmp_path):
    from edgekit.data.datasets import Dataset, Sample

    mask = np.zeros((30, 40), np.uint8)
    mask[:, 30:] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    sample = Sample(tmp_path / "x.png", 1, "blue", tmp_path / "m.png")
    dataset = Dataset("d", tmp_path, "folder", (), (sample,))
    spec = InputSpec(height=8, width=8, tiles=(2, 3), tile_overlap=2, **GREY)  # map 14 x 20
    fitted = dataset.read_mask(sample, *spec.map_size, spec=spec)
    assert fitted.shape == (14, 20) and fitted[:, 15:].all() and not fitted[:, :15].any()
    normal = Sample(tmp_path / "y.png", 0, "good", None)
    assert dataset.read_mask(normal, *spec.map_size, spec=spec).shape == (14, 20)
