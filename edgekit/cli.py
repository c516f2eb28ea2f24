"""The ``edgekit`` command: each command is a thin function over the library."""

from __future__ import annotations

import functools
import itertools
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import click

from edgekit import __version__
from edgekit.errors import EdgekitError
from edgekit.families.registry import FAMILIES, MODELS_WITH_OWN_DATA
from edgekit.preprocess import FITS, parse_roi, parse_tiles
from edgekit.profile.load import MAX_BACKGROUND

DEFAULT_TARGET = "x86"
DEFAULT_SERVE = "127.0.0.1:8080"

#: click types shared by several commands: a bad value is refused before any work starts
SEED = click.IntRange(0, 2**32 - 1)
POSITIVE = click.IntRange(min=1)
SHARE = click.FloatRange(0.0, 1.0, min_open=True, max_open=True)
#: network input side: the backbones need 32; 1024 is MVTec's full resolution, beyond it a bank or
#: feature map no longer fits a host's memory (let alone a Pi's); synth's sizes are the same
IMAGE_SIZE = click.IntRange(32, 1024)
EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
EXISTING = click.Path(exists=True, path_type=Path)
FILE_PATH = click.Path(dir_okay=False, path_type=Path)  # a file, existing or not; never a folder
FOLDER = click.Path(file_okay=False, path_type=Path)
THREADS = click.IntRange(0, 256)  # a Detector's thread budget (0: every usable core)
MODE = click.Choice(["latency", "throughput"])
BACKGROUND = click.IntRange(0, MAX_BACKGROUND)  # busy processes for `profile --background`


class _DataPath(click.Path):
    """An existing dataset folder or a .csv/.json list of images."""

    def __init__(self) -> None:
        super().__init__(exists=True, path_type=Path)

    def convert(self, value, param, ctx):
        path = super().convert(value, param, ctx)
        if Path(path).is_file() and Path(path).suffix.lower() not in (".csv", ".json"):
            self.fail(f"{path} is a file, not a dataset folder or a .csv/.json list of images", param, ctx)
        return path


DATA_PATH = _DataPath()


def _note_line(previous, message, category, *args, **kwargs) -> None:
    """edgekit's threshold warning as one ``note: ...`` line on stderr; others to ``previous``."""
    from edgekit.runtime.detector import ThresholdWarning

    if issubclass(category, ThresholdWarning):
        click.echo(f"note: {message}", err=True)
    else:
        previous(message, category, *args, **kwargs)


class _Group(click.Group):
    """Turns an EdgekitError anywhere below into one ``error: ...`` line and exit code 1, and a bad
    option value (refused by its click type) into one ``error: ...`` line and exit code 2."""

    def invoke(self, ctx: click.Context):
        previous = warnings.showwarning
        warnings.showwarning = functools.partial(_note_line, previous)
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            if isinstance(exc, click.NoSuchOption) or exc.ctx is None or exc.ctx is ctx:
                raise  # unknown options and commands keep click's usage text with its suggestions
            click.echo(f"error: {exc.ctx.command_path}: {exc.format_message()}", err=True)
            ctx.exit(exc.exit_code)
        except EdgekitError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        finally:
            warnings.showwarning = previous


def _budget_options(command):
    """--threads and --mode: the Detector's thread budget (edgekit.load's threads and mode)."""
    command = click.option(
        "--mode",
        type=MODE,
        default=None,
        help="latency: one image at a time on all threads; throughput: one image per thread, "
        "several at once (default: the bundle's target).",
    )(command)
    return click.option(
        "--threads",
        type=THREADS,
        default=None,
        help="Threads for inference, shared by the runtime and the numpy head (default: the "
        "bundle's target; 0: every usable core).",
    )(command)


def _sigterm_cleans_up(command):
    """SIGTERM during this command unwinds like Ctrl-C (exit 143), so its staging folders are removed."""
    import functools

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from edgekit.staging import Terminated, terminate_cleanly

        try:
            with terminate_cleanly():
                return command(*args, **kwargs)
        except Terminated:
            click.echo("error: terminated", err=True)
            raise
        except Exception as exc:  # Python 3.11 wraps what __set_name__ raises (SIGTERM mid-import) in a RuntimeError
            if not _caused_by(exc, Terminated):
                raise
            click.echo("error: terminated", err=True)
            raise Terminated(143) from None

    return wrapper


def _caused_by(exc: BaseException, kind: type) -> bool:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _progress():
    from edgekit.progress import TerminalProgress

    return TerminalProgress()


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="edgekit")
def cli() -> None:
    """Visual anomaly detection from training to embedded devices."""


@cli.group(cls=_Group)
def data() -> None:
    """Datasets: the embedded default data."""


@data.command("synth")
@click.option("--out", "out", type=FOLDER, required=True, help="Folder to write into.")
@click.option("--texture", type=click.Choice(["brick", "grass", "gravel", "all"]), default="brick", show_default=True)
@click.option("--size", type=IMAGE_SIZE, default=256, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--grayscale", is_flag=True, help="One-channel images (the autoencoders' 128x128 grey variant).")
@click.option(
    "--overwrite", is_flag=True, help="Replace a category folder this command wrote before (one with synth.json)."
)
@_sigterm_cleans_up
def data_synth(out: Path, texture: str, size: int, seed: int, grayscale: bool, overwrite: bool) -> None:
    """Write MVTec-AD-layout datasets made from scikit-image's CC0 texture photos."""
    from edgekit.data.synth import synthesize

    bar = _progress()
    folders = synthesize(
        out,
        texture=texture,
        size=size,
        seed=seed,
        grayscale=grayscale,
        overwrite=overwrite,
        progress=lambda done, total: bar("synthesize", done, total),
    )
    for folder in folders:
        click.echo(f"wrote {folder}")


def _family_options(command: Any) -> Any:
    """One ``--option`` per field of the families' options dataclasses (edgekit/families/*/options.py),
    merged by name; the help names each family's default. A model refuses the ones it does not take."""
    import dataclasses
    import typing

    from edgekit.families.registry import options_of

    merged: dict[str, list[tuple[str, Any, Any]]] = {}
    for model in FAMILIES:
        options = options_of(model)
        if options is not None:
            hints = typing.get_type_hints(options)
            for field in dataclasses.fields(options):
                merged.setdefault(field.name, []).append((model, hints[field.name], field))
    for name in sorted(merged, reverse=True):  # decorators apply bottom-up: --help lists them a-z
        entries = merged[name]
        defaults = ", ".join(
            f"{model} {field.default}" if field.default is not None else model for model, _, field in entries
        )
        help_text = f"{entries[0][2].metadata['help'].rstrip('.')} ({defaults})."
        command = click.option(f"--{name.replace('_', '-')}", type=_option_type(entries), default=None, help=help_text)(
            command
        )
    return command


def _option_type(entries: list[tuple[str, Any, Any]]) -> Any:
    """The click type of one merged option: a range every family's bounds fit in (each trainer
    checks its own, stricter ones), an existing path, or one of the text options' choices."""
    kinds = {_typing_base(hint) for _, hint, _ in entries}
    if len(kinds) != 1:
        raise TypeError(f"family options named alike have different types: {entries}")
    kind = kinds.pop()
    if kind is Path:
        return click.Path(exists=True, path_type=Path)
    if kind is str:
        return click.Choice(sorted({choice for _, _, f in entries for choice in f.metadata["choices"]}))
    bounds = {
        (f.metadata["low"], f.metadata["high"], f.metadata["open_low"], f.metadata["open_high"]) for _, _, f in entries
    }
    if len(bounds) == 1:
        low, high, open_low, open_high = bounds.pop()
    else:
        lows = [b[0] for b in bounds]
        highs = [b[1] for b in bounds]
        low = None if None in lows else min(lows)
        high = None if None in highs else max(highs)
        open_low = open_high = False
    if kind is int:
        return click.IntRange(low, high, min_open=open_low, max_open=open_high)
    return click.FloatRange(low, high, min_open=open_low, max_open=open_high)


def _typing_base(hint: Any) -> Any:
    """int for ``int`` and ``Optional[int]``; Path for ``Optional[Path]``."""
    import typing

    arguments = [a for a in typing.get_args(hint) if a is not type(None)]
    return arguments[0] if typing.get_origin(hint) is typing.Union and len(arguments) == 1 else hint


THRESHOLD_RULE_HELP = (
    "How the image threshold is set from held-out normals: bound (upper prediction bound; needs 8 of them), "
    "max (the largest of their scores) or fpr:<rate> (a new normal exceeds it with probability <= rate)."
)
DATA_LAYOUTS = (
    "an MVTec category (ground_truth/ optional), an MVTec or VisA root, a folder with good/ (or ok/) and "
    "a folder per defect, or a .csv/.json list of path,label[,mask][,split]"
)


def _data_options(purpose: str, *, split_seed: bool = False):
    """--data (any layout) or the folder pair --normal-dir/--abnormal-dir/--mask-dir, and --category;
    with ``split_seed``, --split-seed for a command that has no --seed of its own to split normals by."""
    seed_option = click.option(
        "--split-seed",
        type=SEED,
        default=0,
        show_default=True,
        help="Seed that split the normals of layouts with no split of their own (give the one you trained with).",
    )

    def decorate(function):
        for option in reversed(
            [
                click.option("--data", "data_dir", type=DATA_PATH, default=None, help=f"{purpose}: {DATA_LAYOUTS}."),
                click.option(
                    "--normal-dir",
                    type=EXISTING_DIR,
                    default=None,
                    help="Instead of --data: a folder of normal images ...",
                ),
                click.option(
                    "--abnormal-dir", type=EXISTING_DIR, default=None, help="... a folder of anomalous images ..."
                ),
                click.option(
                    "--mask-dir",
                    type=EXISTING_DIR,
                    default=None,
                    help="... and their masks (<stem>.png or <stem>_mask.png).",
                ),
                click.option("--category", default=None, help="Category inside a multi-category dataset root."),
            ]
            + ([seed_option] if split_seed else [])
        ):
            function = option(function)
        return function

    return decorate


def _geometry_options(fit_default: str, roi_default: str):
    """--fit and --roi, the pre-processing's geometry (the defaults say what an unset one means)."""

    def decorate(function):
        function = click.option(
            "--roi",
            default=None,
            help=f"Region of interest x,y,width,height in image pixels, cut from every image first "
            f"(default: {roi_default}).",
        )(function)
        return click.option(
            "--fit",
            "fit",
            type=click.Choice(FITS),
            default=None,
            help=f"How images of another aspect ratio meet the network's: stretch, centre crop or letterbox "
            f"(default: {fit_default}).",
        )(function)

    return decorate


def _open_data(
    data_dir: Optional[Path],
    normal_dir: Optional[Path],
    abnormal_dir: Optional[Path],
    mask_dir: Optional[Path],
    category: Optional[str],
    *,
    seed: int = 0,
    required: bool = True,
):
    """The Dataset the data options name (None when none is given and none is required)."""
    from edgekit.data.datasets import open_dataset, read_folder

    _check_data_options(data_dir, normal_dir, abnormal_dir, mask_dir, required=required)
    if normal_dir is not None:
        return read_folder(normal_dir, abnormal_dir, mask_dir, seed=seed)
    if data_dir is not None:
        return open_dataset(data_dir, category=category, seed=seed)
    return None


def _check_data_options(
    data_dir: Optional[Path],
    normal_dir: Optional[Path],
    abnormal_dir: Optional[Path],
    mask_dir: Optional[Path],
    *,
    required: bool,
) -> None:
    """--data or --normal-dir (with its companions), one of them when ``required``."""
    if data_dir is not None and normal_dir is not None:
        raise EdgekitError("give either --data or --normal-dir, not both")
    if normal_dir is None and (abnormal_dir is not None or mask_dir is not None):
        raise EdgekitError("--abnormal-dir and --mask-dir go with --normal-dir")
    if required and data_dir is None and normal_dir is None:
        raise EdgekitError("give --data (a dataset or a list of images) or --normal-dir (with optional --abnormal-dir)")


@cli.command()
@click.option("--model", type=click.Choice(list(FAMILIES)), default="patchcore", show_default=True)
@_data_options("The dataset")
@click.option("--out", "out", type=FOLDER, required=True, help="Run folder to create.")
@click.option("--image-size", type=IMAGE_SIZE, default=None, help="Input side in pixels (default: the model's).")
@click.option(
    "--holdout",
    type=SHARE,
    default=None,
    help="Share of training normals kept out of training, for fitting thresholds [0.2].",
)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder (only a run: one with run.json).")
@click.option("--no-eval", "no_eval", is_flag=True, help="Do not score the test split after training.")
@_geometry_options("stretch", "the whole image")
@click.option(
    "--tiles",
    default=None,
    help="Cut every image into a grid of ROWSxCOLS overlapping network inputs (e.g. 4x4) instead of resizing "
    "it to one: small defects on large images keep their pixels. Maps are stitched, the score is the worst tile's.",
)
@click.option(
    "--tile-overlap",
    type=click.IntRange(min=0),
    default=None,
    help="Pixels neighbouring tiles share (default with --tiles: an eighth of the input side).",
)
@click.option("--backbone", default=None, help="Feature extractor (default: the model's offline one).")
@click.option("--weights", type=EXISTING_FILE, default=None, help="Local backbone weights file.")
@_family_options
@_sigterm_cleans_up
def train(
    model: str,
    data_dir: Optional[Path],
    normal_dir: Optional[Path],
    abnormal_dir: Optional[Path],
    mask_dir: Optional[Path],
    category: Optional[str],
    out: Path,
    seed: int,
    overwrite: bool,
    no_eval: bool,
    fit: Optional[str],
    roi: Optional[str],
    tiles: Optional[str],
    tile_overlap: Optional[int],
    **model_options,
) -> None:
    """Train a model on a dataset's normal images (host only; needs edgekit-anomaly[train])."""
    from edgekit.data.datasets import read_folder
    from edgekit.train.engine import train as train_model

    own = model in MODELS_WITH_OWN_DATA
    _check_data_options(data_dir, normal_dir, abnormal_dir, mask_dir, required=not own)
    data = data_dir if normal_dir is None else read_folder(normal_dir, abnormal_dir, mask_dir, seed=seed)
    given = {name: value for name, value in model_options.items() if value is not None}
    if category is not None:
        given["category"] = category
    if no_eval:
        given["evaluate"] = False
    if fit is not None:
        given["fit"] = fit
    if roi is not None:
        given["roi"] = parse_roi(roi)
    if tiles is not None:
        given["tiles"] = parse_tiles(tiles)
    if tile_overlap is not None:
        given["tile_overlap"] = tile_overlap
    run = train_model(model, data, out, seed=seed, overwrite=overwrite, progress=_progress(), **given)
    metrics = json.loads((run.path / "metrics.json").read_text())
    summary = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("image_auroc", "pixel_auroc") if k in metrics)
    config = run.config
    shape = f", bank {config['bank_rows']}x{config['feature_dims']}" if "bank_rows" in config else ""
    click.echo(
        f"trained {model} ({config.get('backbone', 'no backbone')}{shape}) "
        f"in {config['train_seconds']:.1f} s → {run.path}" + (f"; training path: {summary}" if summary else "")
    )
    from edgekit.runtime.decision import MIN_HELD_OUT

    held = len(config.get("held_out_images", ()))
    if 0 < held < MIN_HELD_OUT:
        click.echo(
            f"note: {held} held-out normals; export's default threshold rule needs {MIN_HELD_OUT}: train on more "
            f"normals or a larger --holdout, or export with --threshold-rule max",
            err=True,
        )


@cli.command("export")
@click.argument("run_dir", type=EXISTING_DIR)
@click.option("--target", default=DEFAULT_TARGET, show_default=True, help="A name from `edgekit targets`.")
@click.option("--format", "format_name", default=None, help="One of the target's formats (default: its first choice).")
@click.option("--precision", default=None, help="fp32, fp16 or int8, as the target allows (default: the target's).")
@click.option(
    "--calibration-images",
    type=POSITIVE,
    default=None,
    help="Training normals to calibrate a quantized model on (default: the model family's recipe).",
)
@click.option(
    "--max-drop",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="int8 with accuracy control (NNCF's for OpenVINO and ONNX, op type by op type for TFLite): ops return to "
    "float until the score agreement on held-out normals, plain and with defects painted on, drops by at most this.",
)
@click.option(
    "--painted-calibration",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Share of the calibration normals that also go in with each defect painted on, so int8 ranges "
    "include defect activations (default: the family's recipe).",
)
@click.option(
    "--bank-dims",
    default=None,
    help="PatchCore bank dimensions: 32|64|128|256|full|auto, or N+r / auto+r for N principal axes plus "
    "the residual energy PCA drops as one more coordinate. Any --bank-* option replaces the default bank "
    "(all dims, int8, 1/20 of the coreset's bytes, within the head budget); unset ones then mean 'as trained'.",
)
@click.option(
    "--bank-dtype", type=click.Choice(["float32", "float16", "int8"]), default=None, help="PatchCore bank storage type."
)
@click.option("--bank-size", type=POSITIVE, default=None, help="PatchCore: re-select the bank down to N rows.")
@click.option("--threshold-rule", default="bound", show_default=True, help=THRESHOLD_RULE_HELP)
@_geometry_options("the run's", "the run's")
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    required=True,
    help="Bundle folder, or a file ending in .edgekit for the single-file form.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle (only a bundle).")
@_sigterm_cleans_up
def export_cmd(
    run_dir: Path,
    target: str,
    format_name: Optional[str],
    precision: Optional[str],
    calibration_images: Optional[int],
    max_drop: Optional[float],
    painted_calibration: Optional[float],
    bank_dims: Optional[str],
    bank_dtype: Optional[str],
    bank_size: Optional[int],
    threshold_rule: str,
    fit: Optional[str],
    roi: Optional[str],
    out: Path,
    overwrite: bool,
) -> None:
    """Export a trained run to a bundle for one target."""
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run

    options = ExportOptions(
        format=format_name,
        precision=precision,
        calibration_images=calibration_images,
        max_drop=max_drop,
        painted_calibration=painted_calibration,
        bank_dims=bank_dims,
        bank_dtype=bank_dtype,
        bank_size=bank_size,
        threshold_rule=threshold_rule,
        fit=fit,
        roi=parse_roi(roi) if roi is not None else None,
    )
    started = time.perf_counter()  # said here, not in the manifest: a duration would make exports differ
    bundle = export_run(run_dir, out, target=target, options=options, overwrite=overwrite, progress=_progress())
    m = bundle.manifest
    click.echo(
        f"exported {m.model} for {m.target} ({m.network.format} on {m.runtime}, {m.precision}) → {out} "
        f"in {time.perf_counter() - started:.1f} s [{bundle.size_bytes() / 1e6:.2f} MB; image threshold "
        f"{m.decision.image_threshold:.4g} fitted on {m.decision.fitted_on} held-out normals of the "
        f"exported model]"
    )


@cli.command()
@click.argument("bundle", type=EXISTING)
@click.argument("images", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list instead of lines.")
@click.option("--overlay", type=FOLDER, default=None, help="Folder for heat-map overlays (<image stem>_overlay.png).")
@click.option(
    "--fail-on-anomaly", is_flag=True, help="Exit 3 when any image is anomalous (0: all normal, 1: an error)."
)
@click.option(
    "--require-signature",
    "trusted_keys",
    multiple=True,
    type=EXISTING_FILE,
    help="Refuse the bundle unless signed by this public key (edgekit keygen). Repeatable.",
)
@_budget_options
@click.pass_context
def predict(
    ctx: click.Context,
    bundle: Path,
    images: tuple[str, ...],
    as_json: bool,
    overlay: Optional[Path],
    fail_on_anomaly: bool,
    trusted_keys: tuple[Path, ...],
    threads: Optional[int],
    mode: Optional[str],
) -> None:
    """Score images with a bundle (torch-free). IMAGES: files, folders, globs, or - for one image on stdin."""
    from edgekit.runtime.detector import load
    from edgekit.runtime.overlay import write_overlay

    detector = load(bundle, trusted_keys=list(trusted_keys) or None, threads=threads, mode=mode)
    channels = detector.manifest.input.channels
    results, anomalous = [], 0
    for name, pixels, prediction in _scored(detector, _expand_images(images), channels):
        anomalous += prediction.is_anomalous
        row = {
            "image": name,
            "score": round(prediction.score, 6),
            "raw_score": prediction.raw_score,
            "is_anomalous": prediction.is_anomalous,
        }
        if overlay is not None:
            stem = "stdin" if name == "-" else Path(name).stem
            row["overlay"] = str(write_overlay(pixels, prediction.anomaly_map, overlay / f"{stem}_overlay.png"))
        results.append(row)
        if not as_json:
            verdict = "ANOMALOUS" if prediction.is_anomalous else "normal"
            click.echo(f"{name}\t{verdict}\tscore {prediction.score:.3f}\traw {prediction.raw_score:.4f}")
    if as_json:
        click.echo(json.dumps(results, indent=2))
    ctx.exit(3 if fail_on_anomaly and anomalous else 0)


def _expand_images(arguments: tuple[str, ...]) -> list[str]:
    """Files as given, folders as their image files in name order, globs expanded; "-" stays."""
    import glob

    from edgekit.serve.sources import IMAGE_SUFFIXES

    names: list[str] = []
    for argument in arguments:
        path = Path(argument)
        if argument == "-" or path.is_file():
            names.append(argument)
        elif path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise EdgekitError(f"{argument}: no image files in this folder")
            names += found
        elif any(ch in argument for ch in "*?["):
            found = sorted(p for p in glob.glob(argument, recursive=True) if Path(p).is_file())
            if not found:
                raise EdgekitError(f"{argument}: no file matches this pattern")
            names += found
        else:
            raise EdgekitError(f"{argument}: no such image file, folder or pattern")
    if names.count("-") > 1:
        raise EdgekitError("- (stdin) can be given once")
    return names


def _read_stdin_image(channels: int):
    from edgekit.preprocess import decode_image

    data = sys.stdin.buffer.read(64 * 2**20 + 1)
    if len(data) > 64 * 2**20:
        raise EdgekitError("-: the image on stdin is larger than 64 MiB")
    if not data:
        raise EdgekitError("-: nothing on stdin")
    return decode_image(data, channels, label="-")


@cli.command("run")
@click.argument("bundle", type=EXISTING)
@click.option(
    "--source",
    default=None,
    help="Camera index or /dev/videoN, video file, rtsp:// or http:// stream, image folder, or a glob.",
)
@click.option("--watch", is_flag=True, help="Folder or glob: keep scoring files that appear later.")
@click.option("--fps", type=float, default=None, help="Score at most this many frames per second.")
@click.option("--max-frames", type=int, default=None, help="Stop after scoring this many frames.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option(
    "--events",
    default="-",
    show_default=True,
    help="JSON Lines file for one event per scored frame ('-': stdout; 'none': no events).",
)
@click.option(
    "--events-max-mb",
    type=float,
    default=100.0,
    show_default=True,
    help="Rotate the events file past this size (one previous file is kept as FILE.1).",
)
@click.option(
    "--save-anomalies",
    type=FOLDER,
    default=None,
    help="Folder for anomalous frames, their heat-map overlays and events.",
)
@click.option("--keep", type=int, default=100, show_default=True, help="Saved anomalies kept (newest).")
@click.option("--keep-mb", type=float, default=500.0, show_default=True, help="Size cap of saved anomalies.")
@click.option(
    "--save-frames",
    type=FOLDER,
    default=None,
    help="Folder for every --save-every'th frame as PNG, whatever its verdict: camera frames to re-fit "
    "the bundle on (edgekit fit BUNDLE --normals FOLDER).",
)
@click.option("--save-every", type=int, default=10, show_default=True, help="With --save-frames.")
@click.option(
    "--save-frames-keep", type=int, default=500, show_default=True, help="With --save-frames: frames kept (newest)."
)
@click.option("--mqtt", default=None, help="MQTT broker HOST[:PORT]: one message per anomaly plus a heartbeat.")
@click.option("--mqtt-topic", default="edgekit", show_default=True, help="Topic prefix.")
@click.option(
    "--mqtt-user",
    default=None,
    help="MQTT user name; the password is read from env EDGEKIT_MQTT_PASSWORD "
    "(never from the command line, which ps and unit files show).",
)
@click.option("--mqtt-tls", is_flag=True, help="MQTT over TLS (default port 8883), with the system's CA certificates.")
@click.option("--heartbeat", type=float, default=30.0, show_default=True, help="Seconds between MQTT heartbeats.")
@click.option("--webhook", default=None, help="URL that receives each anomaly as a JSON POST (with retries).")
@click.option(
    "--serve",
    "serve",
    is_flag=False,
    flag_value=DEFAULT_SERVE,
    default=None,
    help=f"Local page and HTTP API on HOST:PORT [{DEFAULT_SERVE}]. Other than loopback only when asked.",
)
@click.option(
    "--token",
    default=None,
    envvar="EDGEKIT_TOKEN",
    help="Bearer token the page and API require (or env EDGEKIT_TOKEN).",
)
@_budget_options
@click.option(
    "--require-signature",
    "trusted_keys",
    multiple=True,
    type=EXISTING_FILE,
    help="Refuse the bundle unless signed by this public key (edgekit keygen). Repeatable.",
)
@click.option(
    "--print-systemd-unit", is_flag=True, help="Print a systemd unit that runs this command at boot, and exit."
)
@click.option("--user", default=None, help="With --print-systemd-unit: the user the service runs as.")
@click.pass_context
def run_cmd(
    ctx: click.Context, bundle: Path, print_systemd_unit: bool, user: Optional[str], events: str, **options
) -> None:
    """Inspect frames from a camera, video, stream or folder, all day: events out, page and API."""
    from edgekit.serve.app import RunConfig, run_service

    if print_systemd_unit:
        click.echo(_systemd_unit(user), nl=False)
        return
    if user is not None:
        raise EdgekitError("--user goes with --print-systemd-unit")
    config = RunConfig(bundle=bundle, events=None if events.lower() == "none" else events, **options)
    ctx.exit(run_service(config))


#: secrets a unit must not carry on its command line (readable by every user): read from this file
ENVIRONMENT_FILE = "/etc/edgekit/edgekit.env"


def _scored(detector, names: Iterable[str], channels: int) -> Iterator[tuple[str, Any, Any]]:
    """(name, pixels, prediction) per image: one at a time in latency mode; in throughput mode a few
    per lane at once through predict_batch (so only that many images are decoded at a time)."""
    from edgekit.preprocess import read_image

    group_size = 1 if detector.budget.lanes == 1 else 2 * detector.budget.lanes
    names = iter(names)
    while True:
        group = [
            (name, _read_stdin_image(channels) if name == "-" else read_image(name, channels))
            for name in itertools.islice(names, group_size)
        ]
        if not group:
            return
        predictions = detector.predict_batch([pixels for _, pixels in group], batch_size=1)
        for (name, pixels), prediction in zip(group, predictions):
            yield name, pixels, prediction


def _systemd_unit(user: Optional[str]) -> str:
    """The unit for this very command line, minus the unit options and the token, with absolute paths."""
    import getpass
    import os

    from edgekit.serve.service import systemd_unit

    arguments, skip, secrets = [], False, []
    for argument in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if argument in ("--user", "--token"):
            skip = True
            secrets += ["EDGEKIT_TOKEN"] if argument == "--token" else []
            continue
        if argument == "--print-systemd-unit" or argument.startswith(("--user=", "--token=")):
            secrets += ["EDGEKIT_TOKEN"] if argument.startswith("--token=") else []
            continue
        secrets += ["EDGEKIT_MQTT_PASSWORD"] if argument.startswith("--mqtt-user") else []
        arguments.append(_absolute_if_path(argument))
    script = Path(sys.argv[0])  # this venv's own script, not whichever edgekit comes first on PATH
    if script.name != "edgekit" or not script.is_file():
        script = Path(sys.executable).with_name("edgekit")
    if secrets:
        click.echo(
            f"note: put {' and '.join(f'{name}=...' for name in secrets)} in {ENVIRONMENT_FILE} "
            f"(owned by root, mode 600); the unit reads it, so no secret is on a command line",
            err=True,
        )
    return systemd_unit(
        [str(script.absolute()), *arguments],
        user=user or getpass.getuser(),
        working_directory=os.getcwd(),
        environment_file=ENVIRONMENT_FILE if secrets else None,
    )


def _absolute_if_path(argument: str) -> str:
    """An argument that names an existing file or folder, made absolute (a unit has no cwd of ours)."""
    if argument.startswith("-") or "://" in argument:
        return argument
    path = Path(argument)
    return str(path.resolve()) if path.exists() else argument


@cli.command()
@click.option(
    "--out", "out", type=FILE_PATH, required=True, help="Key name: writes OUT.key (private, mode 0600) and OUT.pub."
)
def keygen(out: Path) -> None:
    """Make an Ed25519 key pair for signing bundles (needs edgekit-anomaly[sign])."""
    from edgekit.signing import generate_keys, read_public_key

    private, public = generate_keys(out)
    click.echo(
        f"private key {private} (keep it off the devices), public key {public} "
        f"(id {read_public_key(public).key_id}; copy it to the devices)"
    )


@cli.command()
@click.argument("bundle", type=EXISTING)
@click.option("--key", "key", type=EXISTING_FILE, required=True, help="Private key file (NAME.key).")
def sign(bundle: Path, key: Path) -> None:
    """Verify a bundle and sign its manifest (which lists every file's sha256) with KEY."""
    from edgekit.signing import sign_bundle

    key_id = sign_bundle(bundle, key)
    click.echo(f"signed {bundle} with key {key_id}")


@cli.command()
@click.argument("bundle", type=EXISTING)
@click.option(
    "--pubkey",
    "pubkeys",
    type=EXISTING_FILE,
    multiple=True,
    required=True,
    help="A trusted public key file (NAME.pub). Repeatable: any one of them will do.",
)
def verify(bundle: Path, pubkeys: tuple[Path, ...]) -> None:
    """Check every file of a bundle and its signature by a trusted key (exit 1 if not)."""
    from edgekit.bundle import load_bundle

    with load_bundle(bundle, trusted_keys=list(pubkeys)) as loaded:
        pass
    click.echo(
        f"{bundle}: intact ({len(loaded.manifest.files)} files and the manifest), signed by key {loaded.signed_by}"
    )


@cli.command("fit")
@click.argument("bundle", type=EXISTING)
@click.option(
    "--normals",
    "normals",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder of normal images captured on the device, or any dataset layout (its training normals).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=None,
    help="New bundle (default: replace BUNDLE in place, atomically).",
)
@click.option("--add", is_flag=True, help="Extend the existing bank instead of replacing it.")
@click.option(
    "--holdout",
    type=SHARE,
    default=0.2,
    show_default=True,
    help="Share of the images kept out of the bank, for re-fitting the thresholds.",
)
@click.option("--seed", type=SEED, default=None, help="Split and coreset seed (default: the bundle's training seed).")
@click.option("--threshold-rule", default=None, help=THRESHOLD_RULE_HELP + " Default: the bundle's own.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out bundle.")
@_sigterm_cleans_up
def fit_cmd(
    bundle: Path,
    normals: Path,
    out: Optional[Path],
    add: bool,
    holdout: float,
    seed: Optional[int],
    threshold_rule: Optional[str],
    overwrite: bool,
) -> None:
    """Build a bundle's memory bank from normal images on the device (torch-free) and re-fit thresholds."""
    from edgekit.fit import fit_bundle

    result = fit_bundle(
        bundle,
        normals,
        out=out,
        add=add,
        holdout=holdout,
        seed=seed,
        overwrite=overwrite,
        threshold_rule=threshold_rule,
        progress=_progress(),
    )
    m = result.manifest
    bank = m.head.params.get("bank", {})
    click.echo(
        f"fitted {m.model} bank {bank.get('rows')}x{bank.get('dims')} {bank.get('dtype')} on "
        f"{bank.get('fitted', {}).get('images')} images → {out or bundle} [image threshold "
        f"{m.decision.image_threshold:.4g} fitted on {m.decision.fitted_on} held-out normals]"
    )


@cli.command("threshold")
@click.argument("bundle", type=EXISTING)
@_data_options(split_seed=True, purpose="Validation data, not the data you test on; its test split is scored")
@click.option(
    "--rule",
    required=True,
    help="bound, max or fpr:<rate> (on the normals, as for export), or f1 (best F1 over normals and "
    "labelled anomalies).",
)
@click.option(
    "--out", "out", type=click.Path(path_type=Path), default=None, help="New bundle (default: replace BUNDLE in place)."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out bundle.")
@_sigterm_cleans_up
def threshold_cmd(
    bundle: Path,
    data_dir: Optional[Path],
    normal_dir: Optional[Path],
    abnormal_dir: Optional[Path],
    mask_dir: Optional[Path],
    category: Optional[str],
    split_seed: int,
    rule: str,
    out: Optional[Path],
    overwrite: bool,
) -> None:
    """Re-fit a bundle's thresholds by a rule on validation data, with this machine's runtime."""
    from edgekit.fit import refit_thresholds

    dataset = _open_data(data_dir, normal_dir, abnormal_dir, mask_dir, category, seed=split_seed)
    result = refit_thresholds(bundle, dataset, rule, out=out, overwrite=overwrite, progress=_progress())
    d = result.manifest.decision
    click.echo(
        f"image threshold {d.image_threshold:.4g} by rule {d.rule} on {d.validation['normals']} normal and "
        f"{d.validation['anomalies']} anomalous validation images, {d.fitted_with['runtime']} "
        f"{d.fitted_with['version']} → {out or bundle}"
    )


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--target", default=DEFAULT_TARGET, show_default=True)
@click.option(
    "--sweep",
    is_flag=True,
    help="PATHS may be training runs: export every variant the target allows (format x precision x "
    "bank) into OUT/bundles and measure each. Bundles among PATHS are measured as given.",
)
@click.option("--precisions", default=None, help="With --sweep: only these precisions (comma-separated).")
@click.option("--formats", default=None, help="With --sweep: only these formats (comma-separated).")
@click.option("--banks", default=None, help="With --sweep: only these bank settings (full,default,small).")
@click.option(
    "--estimate",
    is_flag=True,
    help="On a host that is not the target: a roofline latency estimate from FLOPs and the target's "
    "published peak, labelled 'estimate'; accuracy is scored on this host.",
)
@_data_options(
    split_seed=True, purpose="Labelled data, for image/pixel AUROC, PRO, F1 at the bundle's threshold and heat maps"
)
@click.option("--runs", type=POSITIVE, default=100, show_default=True, help="Timed runs after warm-up.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--cold-starts", type=POSITIVE, default=3, show_default=True, help="Fresh processes timed (median).")
@click.option(
    "--background",
    type=BACKGROUND,
    default=0,
    show_default=True,
    help="Run N busy processes (one spinning core each) during the latency runs, stopped after them, to "
    "see latency under contention. Processes, not threads: a busy thread would hold this "
    "process's GIL.",
)
@_budget_options
@click.option("--out", "out", type=FOLDER, default=Path("."), show_default=True)
@_sigterm_cleans_up
def profile(
    paths: tuple[Path, ...],
    target: str,
    sweep: bool,
    precisions: Optional[str],
    formats: Optional[str],
    banks: Optional[str],
    estimate: bool,
    data_dir: Optional[Path],
    normal_dir: Optional[Path],
    abnormal_dir: Optional[Path],
    mask_dir: Optional[Path],
    category: Optional[str],
    split_seed: int,
    runs: int,
    warmup: int,
    cold_starts: int,
    background: int,
    threads: Optional[int],
    mode: Optional[str],
    out: Path,
) -> None:
    """Measure bundles on this device: latency, cold start, memory, size, accuracy, heat maps.

    Writes OUT/profile.json, OUT/profile.md and a self-contained OUT/report.html; each measurement
    records the load average and the other busy processes while it ran."""
    from edgekit.profile.report import check_host, profile_bundles
    from edgekit.targets import get_target
    from edgekit.variants import export_variants, plan_variants

    spec = get_target(target)
    check_host(spec, estimate=estimate)  # before any export: a wrong host is said at once
    if not sweep and (precisions or formats or banks):
        raise EdgekitError("--precisions, --formats and --banks choose sweep variants: add --sweep")
    if estimate and background:
        raise EdgekitError("--background loads the device during timed runs; with --estimate nothing is timed")
    dataset = _open_data(data_dir, normal_dir, abnormal_dir, mask_dir, category, seed=split_seed, required=False)
    bar = _progress()
    bundles: list[Path] = []
    for path in paths:
        if (path / "run.json").is_file():
            if not sweep:
                raise EdgekitError(
                    f"{path} is a training run: export it first, or pass --sweep to export and "
                    f"measure every variant of it"
                )
            from edgekit.train.run import open_run

            model = open_run(path).model
            variants = plan_variants(
                spec, model=model, formats=_split(formats), precisions=_split(precisions), banks=_split(banks)
            )
            click.echo(f"{path}: {len(variants)} variants for {spec.name} → {out / 'bundles'}")
            exported, refused = export_variants(path, spec.name, out / "bundles", variants, progress=bar)
            for variant, why in refused:
                click.echo(f"{path}: {variant.slug} left out: {why}")
            bundles += exported
        elif path.exists():
            bundles.append(path)
        else:
            raise EdgekitError(f"{path}: no such bundle or training run")
    profile_bundles(
        bundles,
        target=spec.name,
        out=out,
        data=dataset,
        runs=runs,
        warmup=warmup,
        cold_starts=cold_starts,
        estimate=estimate,
        background=background,
        threads=threads,
        mode=mode,
        progress=bar,
    )
    click.echo((out / "profile.md").read_text())
    click.echo(f"report: {out / 'report.html'}, {out / 'profile.md'} and {out / 'profile.json'}")


def _split(text: Optional[str]) -> Optional[list[str]]:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


@cli.command()
@click.argument("profiles", nargs=-1, required=True, type=FILE_PATH)  # a missing one gets the library's own line
@click.option("--out", "out", type=FILE_PATH, default=Path("report.html"), show_default=True)
def report(profiles: tuple[Path, ...], out: Path) -> None:
    """Merge profile.json files from several devices into one self-contained HTML comparison."""
    from edgekit.profile.report import load_profile, write_report_html

    loaded = [load_profile(p) for p in profiles]
    write_report_html(loaded, out, sources=[str(p) for p in profiles])
    click.echo(f"report: {out} ({len(loaded)} profiles, {sum(len(p['variants']) for p in loaded)} variants)")


@cli.command()
@click.argument("plan", type=EXISTING_FILE)
@click.option("--out", "out", type=FOLDER, required=True, help="Sweep folder: cells, bundles and the merged report.")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: a process per cell on this machine; ray: Ray tasks on the cluster --address names.",
)
@click.option(
    "--address", default=None, help="With --engine ray: the cluster (default: the one `ray start` made here)."
)
@click.option("--workers", type=POSITIVE, default=None, help="Cells at once (default: as many as the CPUs hold).")
@click.option(
    "--cpus",
    type=POSITIVE,
    default=1,
    show_default=True,
    help="CPUs each cell needs and uses: its training threads and the threads its latencies are measured with.",
)
@click.option(
    "--retries", type=click.IntRange(min=0), default=2, show_default=True, help="Re-runs of a cell whose worker died."
)
@click.option("--retry-failed", is_flag=True, help="Run again the cells that failed in an earlier sweep.")
@_sigterm_cleans_up
def sweep(
    plan: Path,
    out: Path,
    engine: str,
    address: Optional[str],
    workers: Optional[int],
    cpus: int,
    retries: int,
    retry_failed: bool,
) -> None:
    """Run a plan of parts x models x targets: train, export, check and profile every cell, resume
    where a sweep stopped, and merge one report (needs edgekit-anomaly[train]; [ray] for Ray)."""
    from edgekit.sweep.run import run_sweep

    result = run_sweep(
        plan,
        out,
        engine=engine,
        address=address,
        workers=workers,
        cpus=cpus,
        retries=retries,
        retry_failed=retry_failed,
        say=lambda line: click.echo(line, err=True),
    )
    for choice in result["picks"]:
        click.echo(choice.get("text") or f"for part {choice['part']} on {choice['target']}: {choice['why']}")
    failed = sum(1 for cell in result["cells"] if cell["status"] != "done")
    click.echo(
        f"sweep: {len(result['cells'])} cells ({failed} failed), {len(result['rows'])} rows → "
        f"{out / 'sweep.md'}, {out / 'sweep.json'}"
        + (f", {out / 'report.html'}" if (out / "report.html").is_file() else "")
    )


@cli.command("check")
@click.option("--reference", type=EXISTING, required=True, help="The bundle to compare against.")
@click.option("--candidate", type=EXISTING, required=True, help="The bundle under test.")
@_data_options(split_seed=True, purpose="Labelled data; both bundles score its test split")
@click.option(
    "--max-auroc-drop",
    type=float,
    default=0.01,
    show_default=True,
    help="Largest allowed fall of image AUROC from reference to candidate.",
)
@click.option(
    "--min-agreement",
    type=float,
    default=0.98,
    show_default=True,
    help="Smallest allowed share of test images on which both bundles decide the same.",
)
@click.option(
    "--borderline",
    type=float,
    default=0.0,
    show_default=True,
    help="Differing decisions on images whose reference score lies within this share of its threshold "
    "(e.g. 0.01) are listed but not counted against --min-agreement: a quantized network flips those by chance.",
)
@click.option("--device", default=None, help="Run both bundles on this device (e.g. CPU for an igpu bundle).")
@click.option("--junit", type=FILE_PATH, default=None, help="Also write the result as JUnit XML.")
@click.pass_context
def check_cmd(
    ctx: click.Context,
    reference: Path,
    candidate: Path,
    data_dir: Optional[Path],
    normal_dir: Optional[Path],
    abnormal_dir: Optional[Path],
    mask_dir: Optional[Path],
    category: Optional[str],
    split_seed: int,
    max_auroc_drop: float,
    min_agreement: float,
    borderline: float,
    device: Optional[str],
    junit: Optional[Path],
) -> None:
    """CI gate: exit 1 when the candidate lost more accuracy than allowed (2: the check could not run)."""
    from edgekit.check import check_bundles, render_table, write_junit

    try:
        dataset = _open_data(data_dir, normal_dir, abnormal_dir, mask_dir, category, seed=split_seed)
        result = check_bundles(
            reference,
            candidate,
            dataset,
            max_auroc_drop=max_auroc_drop,
            min_agreement=min_agreement,
            borderline=borderline,
            device=device,
            progress=_progress(),
        )
        if junit is not None:
            write_junit(result, junit)
    except EdgekitError as exc:  # like diff/cmp: 1 = the candidate differs too much, 2 = trouble
        click.echo(f"error: {exc}", err=True)
        ctx.exit(2)
    click.echo(render_table(result))
    ctx.exit(0 if result.passed else 1)


@cli.command()
def targets() -> None:
    """List the targets this edgekit can export for."""
    from edgekit.targets import all_targets

    click.echo(f"{'name':<8} {'format':<10} {'runtime':<12} {'device':<7} {'precisions':<18} description")
    for t in all_targets():
        for fmt in t.formats.values():
            precisions = ",".join(p + ("*" if p == fmt.default_precision else "") for p in fmt.precisions)
            marker = "" if fmt.name == t.default_format else "  (alternative format)"
            click.echo(
                f"{t.name:<8} {fmt.name:<10} {fmt.runtime:<12} {t.device:<7} {precisions:<18} {t.description}{marker}"
            )
    click.echo("(* = default precision; the first row of a target is its default format)")


@cli.command()
@click.option("--workdir", type=FOLDER, default=Path("edgekit-demo"), show_default=True)
@click.option("--texture", type=click.Choice(["brick", "grass", "gravel"]), default="brick", show_default=True)
@_sigterm_cleans_up
def demo(workdir: Path, texture: str) -> None:
    """The whole path on the embedded default data: synthesize, train, export for x86, profile."""
    from edgekit.data.synth import synthesize
    from edgekit.export.pipeline import export_run
    from edgekit.families.registry import trainer

    bar = _progress()
    click.echo(f"1/4 data: {texture} textures with synthetic defects → {workdir / 'data'}")
    (category,) = synthesize(
        workdir / "data", texture=texture, overwrite=True, progress=lambda done, total: bar("synthesize", done, total)
    )
    click.echo("2/4 train: PatchCore, tf_efficientnet_lite0 (offline ImageNet weights)")
    run = trainer("patchcore")(category, workdir / "run", overwrite=True, progress=bar)
    click.echo(f"3/4 export: x86 OpenVINO bundle → {workdir / 'bundle'}")
    export_run(run.path, workdir / "bundle", target="x86", overwrite=True, progress=bar)
    click.echo("4/4 profile on this machine, in a fresh process without torch, as on a device")
    command = [
        sys.executable,
        "-m",
        "edgekit",
        "profile",
        str(workdir / "bundle"),
        "--target",
        "x86",
        "--data",
        str(category),
        "--out",
        str(workdir / "report"),
    ]
    if subprocess.run(command, stdout=subprocess.DEVNULL).returncode != 0:
        raise EdgekitError("profiling the demo bundle failed (see the message above)")
    click.echo((workdir / "report" / "profile.md").read_text())
    click.echo(f"report: {workdir / 'report' / 'report.html'} (open it in a browser), profile.md and profile.json")


def main() -> None:  # pragma: no cover - console-script entry
    cli(prog_name="edgekit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
