"""The self-contained HTML trade-off report: Pareto front, one combined SVG chart, tables, heat maps.

Fast, no browser: two synthetic profiles (a measured x86 with four variants, a roofline-estimate rpi4 with
two) rendered to a string and parsed with html.parser / xml.etree.
"""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from edgekit.errors import EdgekitError
from edgekit.profile.html import pareto_front, render_html

EVIL_NAME = "patchcore <script>alert(1)</script> & co"


def _jpeg_base64(seed: int, size: int = 64) -> str:
    """A small real JPEG: a grey gradient with a red blob, like a heat-map overlay."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
    heat = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size * 0.12) ** 2))
    base = 90 + 80 * xx / size
    rgb = np.stack([base + 160 * heat, base * (1 - 0.5 * heat), base * (1 - 0.8 * heat)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=80)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _example(name: str, label: str, truth: bool, score: float, decided: bool, seed: int) -> dict:
    return {
        "image": name,
        "label": label,
        "anomalous_truth": truth,
        "score": score,
        "decided_anomalous": decided,
        "mime": "image/jpeg",
        "overlay_base64": _jpeg_base64(seed),
    }


def _variant(
    name: str,
    precision: str,
    rows: int,
    dims: int,
    *,
    p50: float | None,
    auroc: float | None,
    estimate_ms: float | None = None,
    examples: list | None = None,
) -> dict:
    bank_dtype = "int8" if precision == "int8" else "float32"
    latency = (
        None
        if p50 is None
        else {
            "p50_ms": p50,
            "p90_ms": p50 * 1.05,
            "p99_ms": p50 * 1.6,
            "mean_ms": p50 * 1.04,
            "min_ms": p50 * 0.9,
            "max_ms": p50 * 2.5,
            "throughput_ips": 1000 / p50,
            "stages_p50_ms": {"preprocess": 0.6, "network": p50 * 0.45, "head": p50 * 0.5},
            "method": "p50 of 100 runs after 10 warm-up runs, batch 1",
        }
    )
    estimate = (
        None
        if estimate_ms is None
        else {
            "latency_ms": estimate_ms,
            "network_ms": estimate_ms * 0.75,
            "head_ms": estimate_ms * 0.25,
            "bound": "compute",
            "flops": 1.2e9,
            "bytes": 3.4e6,
            "method": "roofline lower bound from FLOPs (estimate)",
        }
    )
    accuracy = (
        None
        if auroc is None
        else {
            "image_auroc": auroc,
            "pixel_auroc": 0.9876,
            "pro": 0.9512,
            "f1_at_threshold": 0.95,
            "test_images": 60,
            "anomalous": 40,
            "method": "60 test images of the synthetic brick set",
        }
    )
    return {
        "name": name,
        "bundle": {
            "path": f"/bundles/{precision}",
            "model": "patchcore",
            "backbone": "tf_efficientnet_lite0",
            "target": "x86",
            "format": "openvino",
            "precision": precision,
            "runtime": "openvino",
            "runtime_version": "2026.4.0",
            "size_bytes": 1_400_000,
            "input": "256x256x3",
            "bank": {"rows": rows, "dims": dims, "dtype": bank_dtype, "bytes": 149_000},
        },
        "latency": latency,
        "estimate": estimate,
        "cold_start": None
        if p50 is None
        else {
            "cold_start_s": 0.72,
            "load_s": 0.3,
            "first_predict_s": 0.05,
            "peak_rss_mb": 141.0,
            "torch_imported": False,
            "method": "fresh process, 3 repeats",
        },
        "accuracy": accuracy,
        "pareto": False,
        "examples": examples or [],
    }


def _profile(target: str, cpu: str, variants: list[dict], *, estimate: bool) -> dict:
    return {
        "schema": "edgekit-profile/2",
        "edgekit_version": "0.1.0",
        "created": "2026-11-22T10:00:00+00:00",
        "target": target,
        "host_is_target": not estimate,
        "estimate": estimate,
        "device": {
            "cpu": cpu,
            "machine": "x86_64",
            "logical_cores": 2,
            "usable_cores": 2,
            "memory_gb": 23.5,
            "os": "Linux-6.1",
            "python": "3.11.7",
            "numpy": "2.1.0",
        },
        "data": "/data/brick",
        "variants": variants,
    }


def sample_profiles() -> list[dict]:
    """x86 (measured): A1..A3 on the front, A4 dominated by A3. rpi4 (estimates): both on the front."""
    examples = [
        _example("scratch_003.png", "scratch", True, 0.871, True, 1),
        _example("good_012.png", "good", False, 0.214, False, 2),
        _example("crack_007.png", "crack", True, 0.402, False, 3),
    ]
    x86 = _profile(
        "x86",
        "AMD EPYC 7B13",
        [
            _variant(
                "patchcore/lite0 fp32, bank 3900x304 fp32", "fp32", 3900, 304, p50=30.0, auroc=1.0, examples=examples
            ),
            _variant("patchcore/lite0 fp16, bank 3900x304 fp32", "fp16", 3900, 304, p50=20.0, auroc=0.995),
            _variant(
                "patchcore/lite0 int8, bank 975x152 int8", "int8", 975, 152, p50=12.2, auroc=0.99, examples=examples[:2]
            ),
            _variant(EVIL_NAME, "int8", 975, 152, p50=13.0, auroc=0.985),
        ],
        estimate=False,
    )
    rpi4 = _profile(
        "rpi4",
        "Cortex-A72 (estimated on x86)",
        [
            _variant("patchcore/lite0 fp32 on rpi4", "fp32", 3900, 304, p50=None, auroc=1.0, estimate_ms=140.1),
            _variant("patchcore/lite0 int8 on rpi4", "int8", 975, 152, p50=None, auroc=0.99, estimate_ms=40.1),
        ],
        estimate=True,
    )
    return [x86, rpi4]


class _Collector(HTMLParser):
    """Every start tag with its attributes, the text of each <td>, and the cells of each variant row."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.cells: list[str] = []
        self.rows: dict[str, list[str]] = {}
        self._row: list[str] | None = None
        self._in_td = 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "tr":
            self._row = self.rows.setdefault(attributes["data-variant"], []) if "data-variant" in attributes else None
        if tag == "td":
            self._in_td += 1
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_td -= 1
            if self._row is not None:
                self._row.append(self.cells[-1])

    def handle_data(self, data):
        if self._in_td:
            self.cells[-1] += data


def _chart(document: str) -> ET.Element:
    svgs = re.findall(r'<svg class="tradeoff-chart".*?</svg>', document, flags=re.S)
    assert len(svgs) == 1
    return ET.fromstring(svgs[0])


def _points(chart: ET.Element) -> list[ET.Element]:
    return [g for g in chart.iter("g") if "point" in g.get("class", "").split()]


@pytest.fixture(scope="module")
def document() -> str:
    return render_html(sample_profiles())


def test_pareto_front_flags_dominated_points():
    points = [(10.0, 0.99), (20.0, 1.0), (15.0, 0.98), (25.0, 0.995), (5.0, 0.90)]
    assert pareto_front(points) == [True, True, False, False, True]


def test_pareto_front_equal_in_one_coordinate_is_dominated_by_strictly_better_other():
    assert pareto_front([(10.0, 0.99), (10.0, 0.98), (12.0, 0.99)]) == [True, False, False]


def test_pareto_front_keeps_identical_points_both():
    assert pareto_front([(10.0, 0.99), (10.0, 0.99), (11.0, 0.98)]) == [True, True, False]


def test_pareto_front_never_includes_points_with_a_missing_coordinate():
    assert pareto_front([(None, 1.0), (50.0, None), (30.0, 0.9), (float("nan"), 1.0)]) == [False, False, True, False]
    assert pareto_front([]) == []


def test_report_is_one_html5_document_with_one_chart_and_a_point_per_plottable_variant(document):
    assert document.startswith("<!DOCTYPE html>") and document.rstrip().endswith("</html>")
    assert document.count("<svg") == 1
    points = _points(_chart(document))
    assert len(points) == 6
    assert sorted(g.get("data-variant") for g in points) == ["A1", "A2", "A3", "A4", "B1", "B2"]
    assert all(g.find("title") is not None and g.find("title").text for g in points)


def test_pareto_points_of_each_device_are_marked_on_chart_and_table(document):
    chart = _chart(document)
    on_front = {g.get("data-variant") for g in _points(chart) if g.get("data-pareto") == "1"}
    assert on_front == {"A1", "A2", "A3", "B1", "B2"}
    assert len([p for p in chart.iter("path") if p.get("class") == "front"]) == 2  # one step line per device
    rows = {a["data-variant"]: a for t, a in _collect(document).tags if t == "tr" and "data-variant" in a}
    assert [v for v, a in sorted(rows.items()) if "pareto" in a.get("class", "")] == ["A1", "A2", "A3", "B1", "B2"]
    assert document.count("★ Pareto") == 5


def test_estimate_points_are_hollow_and_their_table_cells_say_estimate(document):
    points = {g.get("data-variant"): g for g in _points(_chart(document))}
    assert {v for v, g in points.items() if "estimate" in g.get("class").split()} == {"B1", "B2"}
    mark = list(points["B2"])[1]
    assert mark.get("fill") == "#ffffff" and mark.get("stroke-dasharray")
    assert "estimate" in points["B2"].find("title").text
    cells = _collect(document).cells
    assert "≈40.1 ms (estimate)" in cells and "≈140.1 ms (estimate)" in cells
    assert "≈30.1 (estimate)" in cells  # network stage of B2: 0.75 × 40.1
    assert "12.2" in cells and "0.9900" in cells and "1.40" in cells  # measured p50, AUROC, size MB


def test_report_has_no_external_url(document):
    assert "http://" not in document and "https://" not in document
    assert "<script" not in document and "@import" not in document


def test_variant_name_from_json_is_escaped(document):
    assert "<script>alert(1)</script>" not in document
    assert "patchcore &lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in document


def test_heat_maps_are_embedded_as_data_uris_and_disagreement_is_marked(document):
    images = [a for t, a in _collect(document).tags if t == "img"]
    assert len(images) == 5  # three examples on A1, two on A3
    payload = images[0]["src"].removeprefix("data:image/jpeg;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(payload))).size == (64, 64)
    figures = [a for t, a in _collect(document).tags if t == "figure"]
    assert [f["class"] for f in figures].count("wrong") == 1  # crack_007: anomalous, decided normal
    assert document.count("✗ disagrees with truth") == 1


def test_variant_without_auroc_is_in_the_table_but_left_off_the_chart_with_a_note():
    profiles = sample_profiles()
    profiles[0]["variants"][1]["accuracy"] = None
    document = render_html(profiles)
    assert len(_points(_chart(document))) == 5
    assert re.search(r"Not on the chart[^<]*A2 patchcore/lite0 fp16", document)
    row = _collect(document).rows["A2"]
    assert row[1].startswith("patchcore/lite0 fp16") and row[12] == "—"


def test_latency_axis_is_log_scale_only_when_latencies_span_more_than_tenfold(document):
    assert "(log scale)" in document  # 12.2 ms to 140.1 ms
    assert "(log scale)" not in render_html(sample_profiles()[:1])  # 12.2 ms to 30 ms


def test_missing_figures_show_a_dash():
    profiles = sample_profiles()[:1]
    variant = profiles[0]["variants"][0]
    variant["accuracy"], variant["cold_start"], variant["bundle"]["bank"] = None, None, None
    cells = _collect(render_html(profiles)).rows["A1"]
    assert cells[3] == "—" and cells[10:16] == ["—"] * 6
    assert cells[5] == "30.0"


@pytest.mark.parametrize(
    "profiles, message",
    [
        ([], "no profiles"),
        ([{"schema": "edgekit-profile/2"}], "one.json has no 'variants' list"),
        ([{"schema": "edgekit-profile/9", "variants": []}], "one.json has unknown schema 'edgekit-profile/9'"),
        ([{"variants": []}], "one.json has no 'schema' field"),
        (["not a dict"], "one.json is not an edgekit profile"),
    ],
)
def test_bad_input_raises_one_clear_edgekit_error(profiles, message):
    with pytest.raises(EdgekitError, match=re.escape(message)):
        render_html(profiles, sources=["one.json"])


def test_error_names_the_profile_by_position_without_sources():
    with pytest.raises(EdgekitError, match=r"profile #2 has no 'variants' list"):
        render_html([sample_profiles()[0], {"schema": "edgekit-profile/2"}])


def _collect(document: str) -> _Collector:
    collector = _Collector()
    collector.feed(document)
    return collector


def test_auroc_axis_is_zoomed_from_the_lowest_auroc_minus_a_hundredth_to_one(document):
    chart = _chart(document)
    labels = [t.text for t in chart.iter("text") if t.get("text-anchor") == "end"]
    assert labels == ["0.97", "0.98", "0.99", "1.00"]  # lowest AUROC 0.985


def test_load_during_each_measurement_is_one_line_with_process_names_escaped():
    profiles = sample_profiles()[:1]
    shared = {
        "loadavg_before": [1.9, 1.5, 1.2],
        "loadavg_after": [2.1, 1.6, 1.2],
        "cores": 2,
        "cpu_busy_percent": 97.0,
        "busy_processes": [{"pid": 123, "name": "<b>x</b>", "cpu_percent": 96.6}],
        "background": {"processes": 1, "pids": [456], "cpu_percent": [88.0]},
        "method": "two /proc reads",
    }
    for variant in profiles[0]["variants"]:
        variant["latency"]["load"] = shared
    profiles[0]["variants"][0]["cold_start"]["load"] = {"loadavg_before": "junk", "busy_processes": {"x": 1}}
    document = render_html(profiles)
    assert document.count("Load during latency:") == 1  # the variants were timed in one interleaved window
    assert (
        "load 1.90 → 2.10; CPU 97 % busy (2 cores); busy: &lt;b&gt;x&lt;/b&gt; (pid 123) 97 %; "
        "background: 1 busy process (pid 456 88 %)"
    ) in document
    assert "<b>x</b>" not in document
    assert "Load during cold start of A1:</strong> load average not available; busy processes not available" in document


def test_generated_time_is_source_date_epoch_when_set(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first = render_html(sample_profiles())
    assert "Generated 2023-11-14T22:13:20+00:00 by edgekit" in first
    assert render_html(sample_profiles()) == first  # nothing else in the page depends on the clock
