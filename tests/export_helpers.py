"""Export a run's bundles on demand, each once, for the e2e tests of a model family."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def bundle_exporter(run_path: Path, root: Path) -> Callable[..., Path]:
    """``get(target, fmt, precision="fp32")`` -> the bundle folder, exported into ``root`` the first time.

    Small test runs hold out fewer normals than the default threshold rule needs: they are exported
    with the rule meant for that, ``max``."""
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run
    from edgekit.runtime.decision import MIN_HELD_OUT
    from edgekit.train.run import open_run

    made: dict[str, Path] = {}
    held = len(open_run(run_path).record.held_out_images)
    rule = "bound" if held >= MIN_HELD_OUT else "max"

    def get(target: str, fmt: str, precision: str = "fp32") -> Path:
        name = f"{target}-{fmt}-{precision}"
        if name not in made:
            options = ExportOptions(format=fmt, precision=precision, threshold_rule=rule)
            export_run(run_path, root / name, target=target, options=options)
            made[name] = root / name
        return made[name]

    return get


def some_test_images(category: Path) -> list[Path]:
    """10 of a synthetic category's 60 test images, every kind of defect among them."""
    return sorted((category / "test").glob("*/*.png"))[::6]


def assert_bundle_gives(bundle: Path, images: list[Path], expected: tuple, *, rtol: float = 1e-5):
    """The bundle's raw scores and maps on ``images`` equal ``expected`` (the training path's): scores
    to ``rtol``, maps to ``rtol`` of their largest value. Returns the loaded Detector."""
    import numpy as np

    import edgekit

    detector = edgekit.load(bundle)
    scores, maps = detector.raw(images)
    np.testing.assert_allclose(scores, expected[0], rtol=rtol)
    np.testing.assert_allclose(maps, expected[1], rtol=rtol, atol=rtol * float(expected[1].max()))
    return detector
