"""Train a registered model by name (edgekit/families/registry.py says which trainer), and the
one skeleton every trainer runs (``build_run``).

A trainer is ``train(data, out, *, image_size, **options, **run: Unpack[RunArgs]) -> Run``;
``options`` are the model's own (``backbone``, ``epochs``, ...) and only those the user gave; one
that is not a parameter of the model's trainer is refused in one line. ``run`` (hold-out, seed,
category, overwrite, progress) is the same for every family and goes to ``build_run`` as a
``RunSettings``. A trainer checks its options, then hands ``build_run`` its fit and its evaluation:
the data, the staging, the seed, the split, the provenance, the metrics and the commit are the
engine's.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, TypedDict

from edgekit.errors import EdgekitError
from edgekit.families.registry import trainer
from edgekit.progress import ProgressFn, noop


@dataclass(frozen=True)
class RunSettings:
    """How a run is made, the same for every family: the share of normals held out for thresholds,
    the seed, the dataset's category, whether an earlier run may be replaced, progress, and whether
    the test split is scored (``evaluate=False``: a large training set's run ends at the fit), and the
    images' geometry (``fit``, ``roi``, ``tiles``: see ``edgekit.preprocess.InputSpec``)."""

    holdout: float = 0.2
    seed: int = 0
    category: Optional[str] = None
    overwrite: bool = False
    progress: ProgressFn = noop
    evaluate: bool = True
    fit: str = "stretch"  # edgekit.preprocess.FITS: how other aspect ratios meet the network's
    roi: tuple[int, ...] = ()  # x, y, width, height cut from every image first
    tiles: tuple[int, ...] = ()  # rows, columns of network inputs each image is cut into; () = one
    tile_overlap: Optional[int] = None  # pixels neighbouring tiles share (default: an eighth of a tile)

    def __post_init__(self) -> None:
        if self.tile_overlap is not None and not self.tiles:
            raise EdgekitError("--tile-overlap goes with --tiles")

    def input(self, spec: Any) -> Any:
        """The family's InputSpec with this run's geometry (region of interest, fit, tiles)."""
        from dataclasses import replace

        overlap = 0
        if self.tiles:
            overlap = min(spec.height, spec.width) // 8 if self.tile_overlap is None else self.tile_overlap
        return replace(spec, fit=self.fit, roi=tuple(self.roi), tiles=tuple(self.tiles), tile_overlap=overlap)


class RunArgs(TypedDict, total=False):
    """RunSettings as a trainer's keyword arguments (``**run: Unpack[RunArgs]``)."""

    holdout: float
    seed: int
    category: Optional[str]
    overwrite: bool
    progress: ProgressFn
    evaluate: bool
    fit: str
    roi: tuple[int, ...]
    tiles: tuple[int, ...]
    tile_overlap: Optional[int]


def accepted_options(function: Callable) -> set[str]:
    """The keyword arguments a trainer takes: its own parameters and, through ``**run``, RunSettings'."""
    parameters = inspect.signature(function).parameters.values()
    named = {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        named |= {f.name for f in fields(RunSettings)}
    return named


def train(model: str, data: Any, out: Any, **options: Any):
    """Run ``model``'s trainer; an option its trainer does not take is one clear error."""
    function = trainer(model)
    accepted = accepted_options(function)
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


@dataclass
class Fitted:
    """What a family's fit hands back: the run's settings and what the fit found (``config``, with
    ``model``, ``backbone`` and ``layers``), the pre-processing it trained with (``input``, an
    InputSpec), the fitted network (so evaluation does not load it again) and extra metrics."""

    config: dict[str, Any]
    input: Any
    network: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)


#: fit(writer, dataset, trained, held) -> Fitted: builds the model from the ``trained`` normals and
#: saves its files with ``writer``; ``held`` are the held-out normals (EfficientAD fits its map
#: quantiles on them).
FitFn = Callable[[Any, Any, list, list], Fitted]
#: evaluate(run, dataset, network=..., progress=...) -> metrics on the dataset's labelled test split.
EvaluateFn = Callable[..., dict]


def build_run(data: Any, out: Any, how: RunSettings, *, fit: FitFn, evaluate: EvaluateFn) -> Any:
    """Open the data, split its normals (seeded), stage the run folder, seed torch, ``fit``, record
    the provenance, ``evaluate`` on the test split, write metrics.json and commit the run."""
    import torch

    from edgekit.data.datasets import Dataset, open_dataset
    from edgekit.data.splits import split_normals
    from edgekit.train.run import Run, RunRecord, RunWriter, dataset_block, made

    dataset = data if isinstance(data, Dataset) else open_dataset(Path(data), category=how.category, seed=how.seed)
    paths = [sample.path for sample in dataset.train]
    trained_index, held_index = split_normals(len(paths), how.holdout, how.seed)
    trained, held = [paths[i] for i in trained_index], [paths[i] for i in held_index]
    writer = RunWriter(Path(out), overwrite=how.overwrite)
    with writer:
        started = time.perf_counter()
        torch.manual_seed(how.seed)
        fitted = fit(writer, dataset, trained, held)
        found = fitted.config
        record = RunRecord(
            model=found["model"],
            backbone=found["backbone"],
            layers=tuple(found["layers"]),
            input=fitted.input,
            seed=how.seed,
            dataset=dataset_block(dataset),
            trained_images=tuple(trained),
            held_out_images=tuple(held),
            settings={
                **{k: v for k, v in found.items() if k not in RunRecord.COMMON},
                **made(time.perf_counter() - started),
            },
        )
        config = record.to_config()
        run = Run(path=writer.tmp, config=config)
        scored = (
            evaluate(run, dataset, network=fitted.network, progress=how.progress)
            if how.evaluate
            else {"test_split": "not scored (--no-eval)"}
        )
        metrics = {**scored, **fitted.metrics}
        writer.save_json("metrics.json", metrics)
        return writer.commit(config)
