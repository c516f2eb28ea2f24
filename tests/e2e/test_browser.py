"""The headless-Chromium harness (tests/browser.py) that checks self-contained HTML reports.

Each browser test writes a tiny page into tmp_path and loads it in a fresh Chromium (about 1 s each).
Without Chromium these skip on a workstation and fail in CI (see browser.chromium_path).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from browser import BrowserError, is_blank, render_page
from PIL import Image, ImageDraw

CLEAN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>report</title></head>
<body style="margin:0;background:#fff">
<svg width="400" height="200" xmlns="http://www.w3.org/2000/svg">
  <rect x="10" y="10" width="120" height="80" fill="#c33"/>
  <circle cx="220" cy="100" r="60" fill="#36c"/>
  <line x1="0" y1="190" x2="400" y2="190" stroke="#000" stroke-width="4"/>
</svg>
<p id="score"></p>
<script>
  document.getElementById("score").textContent = "image score 0.42";
  console.log("wrote", document.getElementById("score").textContent);
</script>
</body></html>
"""


def write_page(tmp_path: Path, body: str, name: str = "page.html") -> Path:
    page = tmp_path / name
    if not body.lstrip().startswith("<!doctype"):
        body = f"<!doctype html><html><body>{body}</body></html>"
    page.write_text(body)
    return page


def test_clean_page_has_no_errors_no_outside_requests_and_a_drawn_screenshot_of_the_asked_size(tmp_path):
    page = write_page(tmp_path, CLEAN_PAGE)
    result = render_page(page, width=800, height=600)
    assert result.console_errors == []
    assert result.requests == [page.resolve().as_uri()]
    assert result.external_requests == []
    assert result.console_messages == [f"log: wrote image score 0.42 ({page.resolve().as_uri()}:12:11)"]
    with Image.open(io.BytesIO(result.screenshot_png)) as shot:
        assert shot.format == "PNG" and shot.size == (800, 600)
        assert shot.convert("RGB").getpixel((70, 50)) == (0xCC, 0x33, 0x33)  # inside the red rectangle
    assert not is_blank(result.screenshot_png)


def test_uncaught_exception_is_one_error_naming_the_missing_function(tmp_path):
    result = render_page(write_page(tmp_path, "<script>undefinedFunction()</script>"))
    assert len(result.console_errors) == 1
    assert result.console_errors[0].startswith("Uncaught ReferenceError: undefinedFunction is not defined")


def test_console_error_and_failed_assert_are_errors_but_console_log_is_not(tmp_path):
    script = 'console.log("fine"); console.error("boom"); console.assert(1 === 2, "bad")'
    page = write_page(tmp_path, f"<script>{script}</script>")
    result = render_page(page)
    assert [error.split(" (")[0] for error in result.console_errors] == ["boom", "Assertion failed: bad"]
    assert [message.split(" (")[0] for message in result.console_messages] == [
        "log: fine",
        "error: boom",
        "assert: Assertion failed: bad",
    ]


def test_outside_image_is_recorded_as_external_request_and_blocked_so_the_load_still_finishes(tmp_path):
    page = write_page(tmp_path, '<img src="http://192.0.2.1/x.png"><p>text</p>')
    result = render_page(page, timeout=20)
    assert result.external_requests == ["http://192.0.2.1/x.png"]
    assert result.requests == [page.resolve().as_uri(), "http://192.0.2.1/x.png"]


def test_empty_white_page_screenshot_is_blank(tmp_path):
    result = render_page(write_page(tmp_path, ""), width=320, height=240)
    assert Image.open(io.BytesIO(result.screenshot_png)).size == (320, 240)
    assert is_blank(result.screenshot_png)


def test_page_that_never_finishes_loading_raises_a_timeout_instead_of_hanging(tmp_path):
    page = write_page(tmp_path, "<script>while (true) {}</script>")
    with pytest.raises(BrowserError, match="timed out waiting for"):
        render_page(page, timeout=3)


def png_of(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_is_blank_is_true_for_one_colour_and_false_once_something_is_drawn():
    grey = Image.new("RGB", (200, 100), (240, 240, 240))
    assert is_blank(png_of(grey))
    ImageDraw.Draw(grey).rectangle((10, 10, 40, 40), fill=(0, 0, 0))  # 961 black pixels of 20,000
    assert not is_blank(png_of(grey))


def test_is_blank_ignores_a_few_pixels_of_noise():
    white = Image.new("RGB", (400, 300), (255, 255, 255))
    for x in range(3):
        white.putpixel((x, 0), (250, 250, 250))  # 3 near-white pixels: std far below 1
    assert is_blank(png_of(white))
