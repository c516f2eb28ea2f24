"""A sweep cell's recorded check, judged with the plan's gates of the day (edgekit.sweep.report.judge)."""

from __future__ import annotations

import pytest

from edgekit.sweep.plan import Gates
from edgekit.sweep.report import judge

CHECK = {
    "reference": "fp32.edgekit",
    "auroc_drop": 0.004,
    "agreement": 0.95,
    "images": 60,
    "flips": [0.002, -0.008, 0.3],
}


@pytest.mark.parametrize(
    "gates, judged, passed",
    [
        (Gates(), 0.95, False),  # every flip counts: 57 of 60
        (Gates(borderline=0.01), 59 / 60, True),  # the two within 1 % excused, the one at 30 % counts: 98.3 %
        (Gates(borderline=0.01, min_agreement=0.99), 59 / 60, False),
        (Gates(borderline=0.5), 1.0, True),
        (Gates(borderline=0.5, max_auroc_drop=0.003), 1.0, False),  # the AUROC drop alone fails it
    ],
)
def test_flips_within_the_borderline_do_not_count_and_the_auroc_drop_still_does(gates, judged, passed):
    result = judge(CHECK, gates)
    assert result["judged_agreement"] == pytest.approx(judged, abs=1e-6) and result["passed"] is passed
    assert result["agreement"] == 0.95 and result["flips"] == CHECK["flips"]  # the measurement is kept


def test_a_record_without_flips_is_judged_on_its_agreement():
    """Cells written before flips were recorded: the borderline cannot apply, the agreement can."""
    legacy = {"reference": "fp32.edgekit", "auroc_drop": 0.0, "agreement": 0.99, "passed": False}
    assert judge(legacy, Gates(borderline=0.5))["passed"] is True
    assert judge(legacy, Gates(min_agreement=0.995))["passed"] is False
