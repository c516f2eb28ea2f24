"""The int8 gate: before an int8 bundle is written, its network is judged against the float network
on the run's held-out normals and on the same normals with defects painted onto them.

Calibration fits activation ranges to normal images, so what a defect does inside the network can
be clipped, and agreement on normals cannot see it. edgekit's painted defects (scratch, stain,
missing, discolour: ``edgekit.data.synth.apply_defect``) on the held-out normals show it without
a single label, and never touch a test image. Both networks' outputs go through the bundle's own
numpy head; the gate compares image AUROC (normals against painted) and the decisions each makes
at its own threshold (the rule fitted on its own normal scores, as the bundle will be), and the
export refuses when they miss the recipe's limits (``[int8_gate]`` in ``calibration/<family>.toml``,
else ``DEFAULT_LIMITS``). With fewer held-out normals than a threshold needs, the numbers are
recorded but not judged. Each differing decision is recorded with where its float score sat, and
int8's score noise beside it: decisions closer to the threshold than that noise are coin flips
for any int8 network (``docs/quantization.md``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.preprocess import InputSpec, fit_to, prepare, read_image


class Int8Refused(EdgekitError):
    """An int8 network that missed the gate's limits (the message names the numbers; ``check`` holds
    them, as the manifest would have)."""

    def __init__(self, message: str, check: dict[str, Any]) -> None:
        super().__init__(message)
        self.check = check


#: What an int8 network may lose against the float one on the painted validation set.
DEFAULT_LIMITS = {"max_auroc_drop": 0.01, "min_agreement": 0.98}


def at_network_size(spec: InputSpec) -> InputSpec:
    """``spec`` for images already cut and fitted to the network's size (its geometry is done)."""
    return replace(spec, roi=(), fit="stretch")


def painted_set(paths: Sequence[Path], spec: InputSpec, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """The held-out normals at network size, then each of them with each defect kind painted on:
    (images, kinds) with kind "normal" for the originals. Seeded; a kind that cannot be drawn
    visibly on an image (too flat) is left out for that image."""
    from edgekit.data.synth import DEFECT_KINDS, apply_defect

    rng = np.random.default_rng(seed)
    normals = [fit_to(read_image(path, spec.channels), spec) for path in paths]
    images, kinds = list(normals), ["normal"] * len(normals)
    for image in normals:
        plane = image[:, :, 0] if image.shape[2] == 1 else image
        for kind in DEFECT_KINDS:
            try:
                changed, _ = apply_defect(plane, kind, rng)
            except EdgekitError:
                continue
            images.append(changed[:, :, None] if image.shape[2] == 1 else changed)
            kinds.append(kind)
    return images, kinds


def float_scores(
    network: Any, head_score: Callable[[np.ndarray], np.ndarray], images: list[np.ndarray], spec: InputSpec
) -> np.ndarray:
    """Raw image scores of the float torch network through the bundle's head."""
    import torch

    batch = prepare(images, at_network_size(replace(spec, layout="NCHW")))
    with torch.no_grad():
        outputs = [np.asarray(network(torch.from_numpy(batch[i : i + 8]))) for i in range(0, len(batch), 8)]
    return np.asarray(head_score(np.concatenate(outputs)), dtype=np.float64)


def bundle_scores(detector: Any, images: list[np.ndarray]) -> np.ndarray:
    """Raw image scores of a loaded bundle on images already at network size."""
    spec = at_network_size(detector.manifest.input)
    scores = []
    for start in range(0, len(images), 8):
        outputs = detector.run_network(prepare(images[start : start + 8], spec))
        scores.append(detector.run_head(outputs)[0])
    return np.concatenate(scores).astype(np.float64)


def judge(
    fp32: np.ndarray, int8: np.ndarray, kinds: Sequence[str], *, rule: str, limits: dict[str, float]
) -> dict[str, Any]:
    """AUROC of normals against painted defects for both, the share of decisions they share (each
    at ``rule``'s threshold on its own normal scores), where the differing ones sat, the median
    relative change of the painted images' scores and int8's score noise; ``judged`` False when
    the normals are too few for ``rule``."""
    from edgekit.check import limits_held
    from edgekit.metrics import image_auroc
    from edgekit.runtime.decision import ThresholdRule

    labels = np.array([kind != "normal" for kind in kinds])
    normals = int((~labels).sum())
    parsed = ThresholdRule.parse(rule)
    try:
        parsed.check(normals, anomalies=0)
        judged = True
    except EdgekitError:
        parsed, judged = ThresholdRule("max"), False
    thresholds = [parsed.image_threshold(s[~labels], np.zeros(0))[0] for s in (fp32, int8)]
    decided = [fp32 > thresholds[0], int8 > thresholds[1]]
    shift = float(np.median(int8[~labels] - fp32[~labels]))
    scale = max(abs(thresholds[0]), 1e-12)
    change = (int8 - fp32) / np.maximum(np.abs(fp32), 1e-12)
    result = {
        "normals": normals,
        "painted": int(labels.sum()),
        "kinds": sorted(set(kinds) - {"normal"}),
        "fp32_auroc": round(float(image_auroc(labels, fp32)), 6),
        "int8_auroc": round(float(image_auroc(labels, int8)), 6),
        "agreement": round(float(np.mean(decided[0] == decided[1])), 6),
        # where each image decided differently sat: its float score against the float threshold
        "flips": [
            {"kind": kinds[i], "float_margin": round(float((fp32[i] - thresholds[0]) / scale), 6)}
            for i in np.flatnonzero(decided[0] != decided[1])
        ],
        "median_painted_score_change": round(float(np.median(change[labels])), 6),
        "median_normal_score_change": round(float(np.median(change[~labels])), 6),
        # what int8 (and a calibration with painted defects) did to the normals' spread, which the threshold scales
        "normal_spread_change": round(float(np.std(int8[~labels]) / max(np.std(fp32[~labels]), 1e-12) - 1), 6),
        "threshold_rule": parsed.text,
        "thresholds": {"fp32": thresholds[0], "int8": thresholds[1]},
        # how far int8 moves a normal score besides their common shift, in units of the threshold
        # (painted scores, many thresholds high, would swamp it): decisions closer to the threshold
        # than this are coin flips for this int8 network
        "score_noise": round(float(np.median(np.abs((int8 - fp32)[~labels] - shift))) / scale, 6),
        "limits": dict(limits),
        "judged": judged,
    }
    result["passed"] = not judged or all(
        limits_held(
            result["fp32_auroc"] - result["int8_auroc"],
            result["agreement"],
            max_auroc_drop=limits["max_auroc_drop"],
            min_agreement=limits["min_agreement"],
        )
    )
    return result


def limits_for(recipe: dict[str, Any]) -> dict[str, float]:
    """The recipe's ``[int8_gate]`` limits, each checked, over the defaults."""
    section = recipe.get("int8_gate", {})
    limits = dict(DEFAULT_LIMITS)
    for key in DEFAULT_LIMITS:
        if key in section:
            value = section[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise EdgekitError(f"calibration recipe: int8_gate.{key} must be a number from 0 to 1, not {value!r}")
            limits[key] = float(value)
    return limits


def painted_share(recipe: dict[str, Any], given: Optional[float] = None) -> float:
    """``given`` (``--painted-calibration``), else the recipe's ``painted_calibration``: the share of
    calibration normals that also go in with each defect painted on, so int8 ranges include defect
    activations (0: normals only)."""
    value = recipe.get("painted_calibration", 0.0) if given is None else given
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        where = "calibration recipe: painted_calibration" if given is None else "--painted-calibration"
        raise EdgekitError(f"{where} must be a share from 0 to 1, not {value!r}")
    return float(value)


def _where(flips: list[dict[str, Any]]) -> str:
    """Where the differing decisions' float scores sat, for the refusal line (the closest few)."""
    if not flips:
        return ""
    margins = sorted((flip["float_margin"] for flip in flips), key=abs)
    shown = ", ".join(f"{margin:+.1%}" for margin in margins[:4]) + (", ..." if len(margins) > 4 else "")
    return f"; the float scores of those decided differently lie {shown} from the threshold"


def refusal(model: str, target: str, fmt: str, check: dict[str, Any], *, painted: float = 0.0) -> str:
    """The one line an export that failed the gate stops with; its ways out are those not yet taken
    (``painted``: the painted-calibration share this export used)."""
    limits = check["limits"]
    ways = ["--max-drop 0.01 (the ops that cost it return to float)"]
    if painted < 1.0:
        ways.append(f"--painted-calibration {min(1.0, 2 * painted) if painted else 0.25:g}")
    ways.append("--precision fp16 or fp32")
    return (
        f"int8 {model} for {target} ({fmt}) loses accuracy on defects painted onto its {check['normals']} held-out "
        f"normals: AUROC {check['fp32_auroc']:.3f} -> {check['int8_auroc']:.3f} (allowed drop "
        f"{limits['max_auroc_drop']:g}), decisions agree on {check['agreement']:.1%} (at least "
        f"{limits['min_agreement']:.0%}{_where(check['flips'])}), painted scores moved by a median "
        f"{check['median_painted_score_change']:+.0%}, any score by a median {check['score_noise']:.1%} of the "
        f"threshold; "
        f"export with {', or '.join(ways)}, or loosen [int8_gate] in the family's recipe"
    )
