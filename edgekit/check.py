"""``edgekit check``: the CI gate that refuses a candidate bundle that lost too much accuracy.

Both bundles score the labelled test split of one dataset with the device runtime (numpy + the
bundle's runtime, no torch). The candidate fails when its image AUROC falls more than
``max_auroc_drop`` below the reference's, or when its decisions (``is_anomalous``, each bundle at
its own threshold) agree with the reference's on fewer than ``min_agreement`` of the images.
The largest difference of normalised scores (0 = typical normal, 0.5 = threshold) is reported
beside them, and so is every image they decide differently, with how far each bundle's raw score
sat from its threshold: a flip at 0.01 % from the threshold is noise no quantized network avoids,
one at 30 % is a lost defect. ``borderline`` (0 by default) leaves flips of images whose reference
score lies that close to its threshold out of the agreement that is judged; they are still listed.
The result renders as a small table and, for CI systems, as JUnit XML.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.staging import write_atomic

if TYPE_CHECKING:
    from edgekit.data.datasets import Dataset
from edgekit.progress import ProgressFn, noop


def limits_held(
    auroc_drop: float, agreement: float, *, max_auroc_drop: float, min_agreement: float
) -> tuple[bool, bool]:
    """(AUROC drop within its limit, agreement at or above its limit), with a tiny tolerance so a
    value equal to a limit up to float rounding holds. The check, the int8 gate and a sweep's
    report all judge with it."""
    return auroc_drop <= max_auroc_drop + 1e-12, agreement >= min_agreement - 1e-12


def counted_flips(margins: Iterable[float], borderline: float) -> int:
    """How many of the flips (each its reference score's margin from the threshold, as a share of
    it) count against the agreement: those further than ``borderline``; every one at 0."""
    return sum(1 for margin in margins if borderline <= 0 or abs(margin) > borderline)


@dataclass(frozen=True)
class BundleResult:
    """One bundle's scores on the test split."""

    path: str
    target: str
    precision: str
    raw_scores: np.ndarray  # (N,) the head's raw scores, what AUROC is computed on
    scores: np.ndarray  # (N,) normalised: 0 typical normal, 0.5 the bundle's threshold
    decisions: np.ndarray  # (N,) bool, raw score > the bundle's image threshold
    auroc: float
    threshold: float  # the bundle's raw image threshold

    def margins(self) -> np.ndarray:
        """Each raw score's distance from the threshold, relative to the threshold's size (+ above)."""
        return (self.raw_scores - self.threshold) / max(abs(self.threshold), 1e-12)


@dataclass(frozen=True)
class CheckResult:
    data: str
    labels: np.ndarray
    reference: BundleResult
    candidate: BundleResult
    max_auroc_drop: float
    min_agreement: float
    images_scored: tuple[str, ...] = ()  # the test images, in the order of the scores
    borderline: float = 0.0  # flips within this share of the reference threshold are not judged

    @property
    def images(self) -> int:
        return int(self.labels.size)

    @property
    def auroc_drop(self) -> float:
        """Reference AUROC minus candidate AUROC (positive: the candidate is worse)."""
        return self.reference.auroc - self.candidate.auroc

    @property
    def disagreements(self) -> int:
        return int(np.count_nonzero(self.reference.decisions != self.candidate.decisions))

    @property
    def agreement(self) -> float:
        """Share of test images on which both bundles decide the same."""
        return 1.0 - self.disagreements / self.images

    @property
    def borderline_disagreements(self) -> int:
        """Differing decisions on images whose reference score lies within ``borderline`` of its threshold."""
        flipped = self.reference.margins()[self.reference.decisions != self.candidate.decisions]
        return int(flipped.size) - counted_flips(flipped, self.borderline)

    @property
    def judged_agreement(self) -> float:
        """The agreement the limit judges: borderline flips count as agreeing."""
        return 1.0 - (self.disagreements - self.borderline_disagreements) / self.images

    def differing(self) -> list[tuple[str, bool, float, float]]:
        """(image, anomalous, reference margin, candidate margin) of each image decided differently."""
        names = self.images_scored or tuple(f"#{i}" for i in range(self.images))
        ref, cand = self.reference.margins(), self.candidate.margins()
        return [
            (names[i], bool(self.labels[i]), float(ref[i]), float(cand[i]))
            for i in np.flatnonzero(self.reference.decisions != self.candidate.decisions)
        ]

    @property
    def max_score_difference(self) -> float:
        return float(np.max(np.abs(self.reference.scores - self.candidate.scores)))

    @property
    def held(self) -> tuple[bool, bool]:
        """(AUROC drop within its limit, judged agreement at or above its limit)."""
        return limits_held(
            self.auroc_drop,
            self.judged_agreement,
            max_auroc_drop=self.max_auroc_drop,
            min_agreement=self.min_agreement,
        )

    @property
    def failures(self) -> list[str]:
        """Each broken limit in words; empty when the candidate passes."""
        broken = []
        auroc_ok, agreement_ok = self.held
        if not auroc_ok:
            broken.append(
                f"image AUROC dropped by {self.auroc_drop:.4f} "
                f"({self.reference.auroc:.4f} -> {self.candidate.auroc:.4f}), "
                f"more than the allowed {self.max_auroc_drop:.4f}"
            )
        if not agreement_ok:
            broken.append(
                f"decisions agree on {self.judged_agreement:.1%} of test images "
                f"({self.disagreements - self.borderline_disagreements} of {self.images} differ"
                f"{self.borderline_words()}), less than the required {self.min_agreement:.1%}"
            )
        return broken

    @property
    def passed(self) -> bool:
        return not self.failures

    def borderline_words(self) -> str:
        """How many flips the borderline excused, for the failure and JUnit lines ("" without one)."""
        if self.borderline <= 0:
            return ""
        return f" beyond ±{self.borderline:.2%} of the reference threshold; {self.borderline_disagreements} within it"


def _score_bundle(
    detector, path: Path, samples: list, labels: np.ndarray, *, batch_size: int, progress: ProgressFn, stage: str
) -> BundleResult:
    from edgekit.metrics import image_auroc

    predictions = []
    progress(stage, 0, len(samples))
    for start in range(0, len(samples), batch_size):
        predictions.extend(detector.predict_batch(samples[start : start + batch_size], batch_size=batch_size))
        progress(stage, len(predictions), len(samples))
    raw = np.array([p.raw_score for p in predictions], dtype=np.float64)
    manifest = detector.manifest
    return BundleResult(
        path=str(path),
        target=manifest.target,
        precision=manifest.precision,
        raw_scores=raw,
        scores=np.array([p.score for p in predictions], dtype=np.float64),
        decisions=np.array([p.is_anomalous for p in predictions], dtype=bool),
        auroc=image_auroc(labels, raw),
        threshold=float(manifest.decision.image_threshold),
    )


def check_bundles(
    reference: str | Path,
    candidate: str | Path,
    data: "str | Path | Dataset",
    *,
    max_auroc_drop: float = 0.01,
    min_agreement: float = 0.98,
    borderline: float = 0.0,
    category: Optional[str] = None,
    device: Optional[str] = None,
    batch_size: int = 8,
    progress: ProgressFn = noop,
) -> CheckResult:
    """Score both bundles on the test split of ``data`` and compare them against the limits.

    ``device`` overrides both bundles' device (e.g. ``"CPU"`` to check an igpu bundle on a CI
    runner without a GPU). Raises :class:`EdgekitError` for bad input; a broken limit is a
    result (``CheckResult.passed`` is False), not an error.
    """
    from edgekit.data.datasets import Dataset, open_dataset

    if not 0.0 <= max_auroc_drop <= 1.0:
        raise EdgekitError(f"--max-auroc-drop must be between 0 and 1, not {max_auroc_drop}")
    if not 0.0 <= min_agreement <= 1.0:
        raise EdgekitError(f"--min-agreement must be between 0 and 1 (a share of images), not {min_agreement}")
    if not 0.0 <= borderline < 1.0:
        raise EdgekitError(f"--borderline must be from 0 to below 1 (a share of the threshold), not {borderline}")
    dataset = data if isinstance(data, Dataset) else open_dataset(Path(data), category=category)
    samples = [sample.path for sample in dataset.test]
    labels = np.array([sample.label for sample in dataset.test], dtype=bool)
    if labels.all() or not labels.any():
        raise EdgekitError(f"{data}: the test split needs both normal and anomalous images to compare AUROC")
    from edgekit.runtime.detector import load

    paths = (Path(reference), Path(candidate))
    detectors = [load(path, device=device) for path in paths]  # both, before any scoring: fail fast
    results = [
        _score_bundle(detector, path, samples, labels, batch_size=batch_size, progress=progress, stage=stage)
        for detector, path, stage in zip(detectors, paths, ("score reference", "score candidate"))
    ]
    return CheckResult(
        data=str(dataset.root) if isinstance(data, Dataset) else str(data),
        labels=labels,
        reference=results[0],
        candidate=results[1],
        max_auroc_drop=float(max_auroc_drop),
        min_agreement=float(min_agreement),
        images_scored=tuple(_name(Path(path), dataset.root) for path in samples),
        borderline=float(borderline),
    )


def _name(path: Path, root: Path) -> str:
    """``path`` as the user knows it in the data set: relative to its root where it lies inside."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


#: How many differently decided images the table names (the count is always given).
SHOWN_DIFFERENCES = 10


def render_table(result: CheckResult) -> str:
    """The comparison as a plain-text table, one verdict line per limit and an overall result."""
    ref, cand = result.reference, result.candidate
    ok = {True: "ok", False: "FAIL"}
    auroc_ok, agreement_ok = result.held
    rows = [
        ("", "reference", "candidate", "limit", ""),
        ("bundle", ref.path, cand.path, "", ""),
        ("target / precision", f"{ref.target} / {ref.precision}", f"{cand.target} / {cand.precision}", "", ""),
        ("image AUROC", f"{ref.auroc:.4f}", f"{cand.auroc:.4f}", "", ""),
        ("AUROC drop", "", f"{result.auroc_drop:.4f}", f"<= {result.max_auroc_drop:.4f}", ok[auroc_ok]),
        (
            "decision agreement",
            "",
            f"{result.agreement:.1%} ({result.images - result.disagreements}/{result.images})"
            + (
                f"; {result.judged_agreement:.1%} with {result.borderline_disagreements} within "
                f"±{result.borderline:.2%} of the threshold not counted"
                if result.borderline > 0
                else ""
            ),
            f">= {result.min_agreement:.1%}",
            ok[agreement_ok],
        ),
        ("max |score difference|", "", f"{result.max_score_difference:.4f}", "(reported)", ""),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [f"edgekit check on {result.images} test images ({int(result.labels.sum())} anomalous) of {result.data}"]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    differing = result.differing()
    for name, anomalous, ref_margin, cand_margin in differing[:SHOWN_DIFFERENCES]:
        lines.append(
            f"  decided differently: {name} ({'anomalous' if anomalous else 'normal'}); raw score vs each bundle's "
            f"threshold: reference {ref_margin:+.2%}, candidate {cand_margin:+.2%}"
        )
    if len(differing) > SHOWN_DIFFERENCES:
        lines.append(f"  ... and {len(differing) - SHOWN_DIFFERENCES} more decided differently")
    lines.append("scores are normalised per bundle (0 = typical normal, 0.5 = its threshold); AUROC on raw scores")
    lines.append("result: PASS" if result.passed else "result: FAIL - " + "; ".join(result.failures))
    return "\n".join(lines)


def junit_xml(result: CheckResult) -> str:
    """One JUnit test suite with a test case per limit, the numbers as properties."""
    auroc_ok, agreement_ok = result.held
    cases = [
        (
            f"image AUROC drop <= {result.max_auroc_drop:g}",
            not auroc_ok,
            f"AUROC {result.reference.auroc:.4f} -> {result.candidate.auroc:.4f} (drop {result.auroc_drop:.4f})",
        ),
        (
            f"decision agreement >= {result.min_agreement:g}",
            not agreement_ok,
            f"agreement {result.judged_agreement:.4f} ({result.disagreements - result.borderline_disagreements} of "
            f"{result.images} decisions differ{result.borderline_words()})",
        ),
    ]
    suite = ET.Element(
        "testsuite",
        name="edgekit check",
        tests=str(len(cases)),
        failures=str(sum(failed for _, failed, _ in cases)),
        errors="0",
        skipped="0",
    )
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("reference", result.reference.path),
        ("candidate", result.candidate.path),
        ("data", result.data),
        ("images", result.images),
        ("reference_auroc", f"{result.reference.auroc:.6f}"),
        ("candidate_auroc", f"{result.candidate.auroc:.6f}"),
        ("auroc_drop", f"{result.auroc_drop:.6f}"),
        ("agreement", f"{result.agreement:.6f}"),
        ("borderline", f"{result.borderline:g}"),
        ("judged_agreement", f"{result.judged_agreement:.6f}"),
        ("max_score_difference", f"{result.max_score_difference:.6f}"),
    ):
        ET.SubElement(properties, "property", name=name, value=str(value))
    for name, failed, message in cases:
        case = ET.SubElement(suite, "testcase", classname="edgekit.check", name=name)
        if failed:
            ET.SubElement(case, "failure", message=message, type="limit").text = message
        else:
            ET.SubElement(case, "system-out").text = message
    ET.SubElement(suite, "system-out").text = render_table(result)
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def write_junit(result: CheckResult, path: str | Path) -> Path:
    """Write :func:`junit_xml` to ``path`` atomically (``edgekit.staging.write_atomic``)."""
    path = Path(path)
    if path.is_dir():
        raise EdgekitError(f"--junit {path} is a folder; give a file name such as {path / 'edgekit-check.xml'}")
    try:
        write_atomic(path, junit_xml(result))
    except OSError as exc:
        raise EdgekitError(f"could not write {path}: {exc.strerror or exc}") from None
    return path
