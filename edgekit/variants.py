"""``edgekit profile --sweep``: every variant a target allows, exported from a training run (above
both export and profile, as the CLI is).

A variant is one format × precision × memory-bank setting. The sweep exports each into
``<out>/bundles/<variant>`` with the ordinary export pipeline (thresholds re-fitted per variant),
so what is measured is exactly what would be flashed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from edgekit.errors import EdgekitError
from edgekit.families.registry import takes_bank_options
from edgekit.progress import ProgressFn, noop

#: Bank settings a sweep tries (PatchCore): anomalib's bank, the export default, a small one.
BANKS = {
    "full": "the whole coreset, float32 (anomalib's bank)",
    "default": "the export default: int8, re-selected to 1/20 of the full bank's bytes",
    "small": "int8, re-selected to 5 % of the coreset's rows (about 1/80 of the bytes)",
}


@dataclass(frozen=True)
class Variant:
    format: str
    precision: str
    bank: str

    @property
    def slug(self) -> str:
        return f"{self.format}-{self.precision}-bank-{self.bank}"


def plan_variants(
    target,
    *,
    model: str,
    formats: Optional[Sequence[str]] = None,
    precisions: Optional[Sequence[str]] = None,
    banks: Optional[Sequence[str]] = None,
) -> list[Variant]:
    """Every format × precision × bank the target offers, narrowed by the given filters."""
    for bank in banks or ():
        if bank not in BANKS:
            raise EdgekitError(f"unknown bank setting {bank!r}; choose from {', '.join(BANKS)}")
    chosen_formats = list(formats) if formats else list(target.formats)
    for fmt in chosen_formats:
        target.format_spec(fmt)  # unknown format: one clear error
    bank_names = list(banks) if banks else list(BANKS)
    if not takes_bank_options(model):
        bank_names = ["default"]
    variants = [
        Variant(fmt, precision, bank)
        for fmt in chosen_formats
        for precision in target.formats[fmt].precisions
        if not precisions or precision in precisions
        for bank in bank_names
    ]
    if not variants:
        raise EdgekitError(f"no variant of target {target.name} matches --precisions {','.join(precisions or [])}")
    return variants


def export_variants(
    run_dir: Path,
    target: str,
    out_dir: Path,
    variants: Sequence[Variant],
    *,
    archive: bool = False,
    progress: ProgressFn = noop,
) -> tuple[list[Path], list[tuple[Variant, str]]]:
    """Export each variant of a run: the bundle paths (single ``.edgekit`` files with ``archive``),
    in order, and the variants the int8 gate refused, each with its one-line reason (a sweep says
    so instead of failing)."""
    from edgekit.bundle import ARCHIVE_SUFFIX
    from edgekit.export.int8_gate import Int8Refused
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run
    from edgekit.train.run import open_run

    run = open_run(run_dir)
    name = Path(run_dir).resolve().name
    paths, refused = [], []
    for index, variant in enumerate(variants):
        progress(f"export {name} {variant.slug}", index, len(variants))
        options = ExportOptions(format=variant.format, precision=variant.precision, **_bank_options(run, variant.bank))
        out = out_dir / f"{name}-{variant.slug}{ARCHIVE_SUFFIX if archive else ''}"
        try:
            export_run(run_dir, out, target=target, options=options, overwrite=True)
        except Int8Refused as why:
            refused.append((variant, str(why)))
            continue
        paths.append(out)
    progress("export", len(variants), len(variants))
    return paths, refused


def _bank_options(run, bank: str) -> dict:
    if not takes_bank_options(run.model) or bank == "default":
        return {}
    if bank == "full":
        return {"bank_dims": "full", "bank_dtype": "float32"}
    return {"bank_dims": "full", "bank_dtype": "int8", "bank_size": max(1, int(run.config["bank_rows"]) // 20)}
