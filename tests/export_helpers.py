"""Export a run's bundles on demand, each once, for the e2e tests of a model family."""
from __future__ import annotations

from pathlib import Path
from typing import Callable


def bundle_exporter(run_path: Path, root: Path) -> Callable[..., Path]:
    """``get(target, fmt, precision="fp32")`` -> the bundle folder, exported into ``root`` the first time."""
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run

    made: dict[str, Path] = {}

    def get(target: str, fmt: str, precision: str = "fp32") -> Path:
        name = f"{target}-{fmt}-{precision}"
        if name not in made:
            export_run(run_path, root / name, target=target, options=ExportOptions(format=fmt, precision=precision))
            made[name] = root / name
        return made[name]

    return get
