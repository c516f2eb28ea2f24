"""The README's models table has one row per exported family of the registry, so a new family is
measured (``python3 benchmarks/models.py --models NAME``) before it is called done."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_models_table_has_a_row_for_every_exported_family():
    from edgekit.families.registry import FAMILIES

    text = README.read_text(encoding="utf-8")
    table = text[text.index("### The models side by side") :]
    table = table[table.index("| model |") :]
    rows = table[: table.index("\n\n")].splitlines()[2:]  # after the header and the |---| line
    named = [row.split("|")[1].strip().split()[0] for row in rows]  # "dfm ¹" -> "dfm"
    exported = [name for name, family in FAMILIES.items() if family.export_parts]
    assert sorted(named) == sorted(exported)
    assert len(named) == 9
