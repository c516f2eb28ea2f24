"""What the generic layers know about a model family: a name, lazy references and a few facts.

References are "module:function" text, so describing (or listing) a family imports nothing; the
train engine, the export pipeline and the sweep ask the registry instead of naming a family.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Family:
    """One registered model name (a detector family, or a helper trainer such as pdn-teacher)."""

    name: str
    trainer: str  # "module:function": train(data, out, *, ..., **options) -> Run
    export_parts: Optional[str] = None  # "module:function": parts(run, options) -> FamilyParts; None: not exported
    head: Optional[str] = None  # runtime head kind its bundles use ("knn", "mahalanobis", "map"); export checks it
    recipe: Optional[str] = None  # calibration/<recipe>.toml
    bank_options: bool = False  # takes --bank-dims/--bank-dtype/--bank-size (a memory bank to compress)
    own_data: bool = False  # trains on edgekit's own offline images when no --data is given
    not_exported: Optional[str] = None  # "module:NAME": why a run of this model is not exported
    options: Optional[str] = None  # "module:Class": the dataclass of its own training options


def option(
    default: Any,
    help: str,
    *,
    low: Optional[float] = None,
    high: Optional[float] = None,
    open_low: bool = False,
    open_high: bool = False,
    choices: tuple[str, ...] = (),
) -> Any:
    """A field of a family's options dataclass: its default (what the trainer uses when the option is
    not given), the help line of ``edgekit train --<name>`` and the allowed range (or, for text,
    the ``choices``) the CLI checks."""
    metadata = {"help": help, "low": low, "high": high, "open_low": open_low, "open_high": open_high}
    return field(default=default, metadata={**metadata, "choices": tuple(choices)})


def resolve(reference: str) -> Any:
    """The object a "module:name" reference names, importing its module only now."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)
