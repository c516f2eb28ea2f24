"""Train a registered model by name (edgekit/families/registry.py says which trainer).

A trainer is ``train(data, out, *, image_size, holdout, seed, category, overwrite, progress,
**options) -> Run``; ``options`` are the model's own (``backbone``, ``epochs``, ...) and only those
the user gave; one that is not a parameter of the model's trainer is refused in one line.
"""
from __future__ import annotations

import inspect
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.families.registry import trainer


def train(model: str, data: Any, out: Any, **options: Any):
    """Run ``model``'s trainer; an option its trainer does not take is one clear error."""
    function = trainer(model)
    accepted = set(inspect.signature(function).parameters)
    unknown = sorted(name for name in options if name not in accepted)
    if unknown:
        flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
        raise EdgekitError(f"{flags} does not apply to model {model!r}")
    if options.get("overwrite") and data is not None:  # never replace the data or a folder holding it
        from pathlib import Path

        from edgekit.train.run import refuse_unowned_run_dest

        root = Path(data) if isinstance(data, (str, Path)) else Path(data.root)  # a path, or a Dataset
        refuse_unowned_run_dest(Path(out), protect=[root])
    return function(data, out, **options)
