"""Targets are data: ``targets/<name>.toml`` says how a device runs a bundle."""
from __future__ import annotations

from dataclasses import dataclass

from edgekit.errors import EdgekitError
from edgekit.resources import names, read_toml


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    runtime: str
    format: str
    device: str
    precisions: tuple[str, ...]
    default_precision: str
    threads: int
    layout: str


def get_target(name: str) -> Target:
    raw = read_toml("targets", name)
    try:
        target = Target(name=raw["name"], description=raw["description"], runtime=raw["runtime"],
                        format=raw["format"], device=raw["device"], precisions=tuple(raw["precisions"]),
                        default_precision=raw["default_precision"], threads=int(raw["threads"]),
                        layout=raw["layout"])
    except KeyError as exc:
        raise EdgekitError(f"targets/{name}.toml: field {exc.args[0]!r} is missing") from None
    if target.default_precision not in target.precisions:
        raise EdgekitError(f"targets/{name}.toml: default_precision is not among its precisions")
    return target


def all_targets() -> list[Target]:
    return [get_target(name) for name in names("targets")]
