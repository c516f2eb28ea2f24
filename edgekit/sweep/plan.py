"""A sweep plan: parts (datasets) × models × targets, precisions and banks, with the gates a pick must pass.

```toml
[sweep]
targets = ["x86", "rpi4"]          # required
precisions = ["fp32", "int8"]      # default: every precision a target's format offers
formats = ["openvino", "tflite"]   # default: each target's default format
banks = ["default"]                # PatchCore bank settings (edgekit.variants.BANKS); default: "default"

[gates]
max_auroc_drop = 0.01              # against the fp32 variant of the same model and format
min_agreement = 0.98
borderline = 0.0                   # flips this close to the fp32 threshold do not count (edgekit check)
latency_ms = { x86 = 25, rpi4 = 150 }   # a pick's budget per target (measured, or estimated)

[[parts]]
name = "brick"
data = "data/brick"                # relative to the plan file; any layout edgekit reads
category = ""                      # optional

[[models]]
model = "padim"
name = "padim"                     # optional label (default: the model), unique
options = { image_size = 256 }     # train options
```

A cell is one part × one model: trained once, then every variant exported, checked and profiled.
Its key is a digest of everything that decides its result, so a changed plan redoes only the cells
it changed. The gates are not in it: a cell records what it measured, and the report judges that
with the plan's gates of the day, so changing a gate redoes no work.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from edgekit.errors import EdgekitError
from edgekit.resources import tomllib

#: The most cells one plan may hold (a typo in a list should not start a week of work).
MAX_CELLS = 5000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Gates:
    max_auroc_drop: float = 0.01
    min_agreement: float = 0.98
    borderline: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    """One part × one model and the variants to make of it (plain data: it travels to workers)."""

    part: str
    data: str
    category: Optional[str]
    label: str
    model: str
    options: dict[str, Any]
    targets: tuple[str, ...]
    precisions: Optional[tuple[str, ...]]
    formats: Optional[tuple[str, ...]]
    banks: tuple[str, ...]
    seed: int

    @property
    def name(self) -> str:
        return f"{self.part}--{self.label}"

    @property
    def key(self) -> str:
        """16 hex digits over what decides the cell's result."""
        fields = {k: v for k, v in self.__dict__.items()}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=list).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Plan:
    path: Path
    cells: tuple[Cell, ...]
    gates: Gates
    latency_runs: int


def read_plan(path: str | Path) -> Plan:
    """Parse and check a plan; every mistake is one line naming the key."""
    from edgekit.families.registry import FAMILIES
    from edgekit.targets import get_target

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EdgekitError(f"{path}: cannot read the plan ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EdgekitError(f"{path}: not a TOML plan ({exc})") from None
    unknown = sorted(set(raw) - {"sweep", "gates", "parts", "models"})
    if unknown:
        raise EdgekitError(f"{path}: unknown section {unknown[0]!r}; a plan has sweep, gates, parts, models")
    sweep = _table(raw, "sweep", path, {"targets", "precisions", "formats", "banks", "latency_runs", "seed"})
    targets = _names(sweep.get("targets"), "sweep.targets", path, required=True)
    for target in targets:
        try:
            get_target(target)
        except EdgekitError as exc:
            raise EdgekitError(f"{path}: sweep.targets: {exc}") from None
    precisions = _names(sweep.get("precisions"), "sweep.precisions", path)
    formats = _names(sweep.get("formats"), "sweep.formats", path)
    banks = _names(sweep.get("banks"), "sweep.banks", path) or ("default",)
    latency_runs = _integer(sweep.get("latency_runs", 30), "sweep.latency_runs", path, low=1)
    seed = _integer(sweep.get("seed", 0), "sweep.seed", path, low=0)
    gates = _gates(
        _table(raw, "gates", path, {"max_auroc_drop", "min_agreement", "borderline", "latency_ms"}), targets, path
    )
    parts = _entries(raw, "parts", path, {"name", "data", "category"})
    models = _entries(raw, "models", path, {"model", "name", "options"})
    seen: set[str] = set()
    for part in parts:
        _unique(part.get("name"), "parts", seen, path)
        if not isinstance(part.get("data"), str) or not part["data"]:
            raise EdgekitError(f'{path}: part {part["name"]!r} needs data = "a dataset path"')
        if not (path.parent / part["data"]).exists():  # workers read it at the same path
            raise EdgekitError(f"{path}: part {part['name']!r}: no such data {path.parent / part['data']}")
    seen = set()
    for model in models:
        if model.get("model") not in FAMILIES:
            raise EdgekitError(f"{path}: models.model must be one of {', '.join(FAMILIES)}, not {model.get('model')!r}")
        model.setdefault("name", model["model"])
        _unique(model["name"], "models", seen, path)
        if not isinstance(model.get("options", {}), dict):
            raise EdgekitError(f"{path}: models.options of {model['name']!r} must be a table")
    cells = tuple(
        Cell(
            part=part["name"],
            data=str((path.parent / part["data"]).resolve()),
            category=part.get("category") or None,
            label=model["name"],
            model=model["model"],
            options=dict(model.get("options", {})),
            targets=targets,
            precisions=precisions or None,
            formats=formats or None,
            banks=banks,
            seed=seed,
        )
        for part in parts
        for model in models
    )
    if len(cells) > MAX_CELLS:
        raise EdgekitError(f"{path}: {len(cells)} cells; a plan may hold at most {MAX_CELLS}")
    return Plan(path=path, cells=cells, gates=gates, latency_runs=latency_runs)


def _table(raw: dict, name: str, path: Path, keys: set[str]) -> dict:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise EdgekitError(f"{path}: [{name}] must be a table")
    unknown = sorted(set(table) - keys)
    if unknown:
        raise EdgekitError(f"{path}: unknown key {name}.{unknown[0]}; known: {', '.join(sorted(keys))}")
    return table


def _entries(raw: dict, name: str, path: Path, keys: set[str]) -> list[dict]:
    entries = raw.get(name)
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise EdgekitError(f"{path}: the plan needs at least one [[{name}]] entry")
    for entry in entries:
        unknown = sorted(set(entry) - keys)
        if unknown:
            raise EdgekitError(f"{path}: unknown key {name}.{unknown[0]}; known: {', '.join(sorted(keys))}")
    return [dict(entry) for entry in entries]


def _unique(name: Any, what: str, seen: set[str], path: Path) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise EdgekitError(f"{path}: {what}.name must be letters, digits, '_', '.' or '-' (up to 64), not {name!r}")
    if name in seen:
        raise EdgekitError(f"{path}: {what}.name {name!r} appears twice")
    seen.add(name)


def _names(value: Any, key: str, path: Path, *, required: bool = False) -> tuple[str, ...]:
    if value is None and not required:
        return ()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise EdgekitError(f"{path}: {key} must be a non-empty list of names")
    return tuple(dict.fromkeys(value))


def _integer(value: Any, key: str, path: Path, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise EdgekitError(f"{path}: {key} must be an integer of at least {low}, not {value!r}")
    return value


def _gates(table: dict, targets: tuple[str, ...], path: Path) -> Gates:
    values = {}
    for key in ("max_auroc_drop", "min_agreement"):
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise EdgekitError(f"{path}: gates.{key} must be a number from 0 to 1, not {value!r}")
            values[key] = float(value)
    if "borderline" in table:
        value = table["borderline"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise EdgekitError(f"{path}: gates.borderline must be a share from 0 to below 1, not {value!r}")
        values["borderline"] = float(value)
    budgets = table.get("latency_ms", {})
    if not isinstance(budgets, dict):
        raise EdgekitError(f"{path}: gates.latency_ms must be a table of target = milliseconds")
    for target, budget in budgets.items():
        if target not in targets:
            raise EdgekitError(f"{path}: gates.latency_ms names {target!r}, which is not in sweep.targets")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
            raise EdgekitError(f"{path}: gates.latency_ms.{target} must be a positive number, not {budget!r}")
    return Gates(**values, latency_ms={k: float(v) for k, v in budgets.items()})
