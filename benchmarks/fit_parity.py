"""``edgekit fit`` on the device against the host: same bundle, same images, which bank rows and which scores.

    python3 benchmarks/fit_parity.py [--workdir DIR] [--images 40] [--precision fp32|int8] [--arm PYARM]

One default PatchCore run on the synthetic brick (seed 0), exported for rpi4 as TFLite and ONNX
at ``--precision``. The first ``--images`` training normals are fitted into each bundle:

* ``x86 litert``, ``x86 onnxruntime``: on this machine, with the x86 builds of the two runtimes;
* ``arm litert``: under the emulated Raspberry Pi 4 (QEMU, aarch64 builds; ``--arm``), if present.

Printed for each pair of fitted banks: rows they share (a row of one within one int8 step of a
row of the other), the first greedy pick at which they part, and, scored on this machine on the
60 test images: the largest relative difference of image scores and each side's image AUROC.
Emulated timings are not taken.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

FIT = (
    "import sys, json\n"
    "from edgekit.fit import fit_bundle\n"
    "fit_bundle(sys.argv[1], sys.argv[2], out=sys.argv[3], overwrite=True)\n"
)


def _bundles(workdir: Path, precision: str) -> tuple[Path, dict[str, Path]]:
    from edgekit.data.synth import synthesize
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run
    from edgekit.families.patchcore.train import train_patchcore

    category = workdir / "data" / "brick"
    bundles = {"litert": workdir / f"rpi4-tflite-{precision}", "onnxruntime": workdir / f"rpi4-onnx-{precision}"}
    if all((b / "manifest.json").is_file() for b in bundles.values()):
        return category, bundles
    if not (workdir / "run" / "run.json").is_file():
        synthesize(workdir / "data", texture="brick", seed=0, overwrite=True)
        train_patchcore(category, workdir / "run", overwrite=True, evaluate=False)
    for fmt, out in (("tflite", bundles["litert"]), ("onnx", bundles["onnxruntime"])):
        options = ExportOptions(format=fmt, precision=precision)
        export_run(workdir / "run", out, target="rpi4", options=options, overwrite=True)
    return category, bundles


def _bank(bundle: Path) -> np.ndarray:
    from edgekit.bundle import load_bundle
    from edgekit.runtime.bank import decode_bank

    loaded = load_bundle(bundle)
    dtype = loaded.manifest.head.params["bank"]["dtype"]
    return decode_bank({n: loaded.array(n) for n in loaded.manifest.head.arrays}, dtype)


def _compare(a: Path, b: Path, test: list, labels: np.ndarray) -> str:
    import edgekit
    from edgekit.metrics import image_auroc
    from edgekit.runtime.bank import nearest_neighbors

    bank_a, bank_b = _bank(a), _bank(b)
    step = 2.0 * float(np.abs(np.concatenate([bank_a, bank_b])).max()) / 255.0
    _, nearest = nearest_neighbors(bank_a, bank_b)
    shared = int(np.sum(np.abs(bank_a - bank_b[nearest]).max(axis=1) <= step))
    same_order = np.abs(bank_a[: len(bank_b)] - bank_b[: len(bank_a)]).max(axis=1) <= step
    parted = int(np.argmin(same_order)) if not same_order.all() else len(same_order)
    scores = [edgekit.load(bundle, device="CPU").raw(test)[0] for bundle in (a, b)]
    difference = float(np.max(np.abs(scores[0] - scores[1]) / np.abs(scores[1])))
    aurocs = " / ".join(f"{image_auroc(labels, s):.4f}" for s in scores)
    return f"{shared} of {len(bank_a)} | {parted} | {difference:.2%} | {aurocs} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edgekit-fit-parity"))
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--arm", type=Path, default=Path("/opt/edgekit-aarch64/pyarm"))
    args = parser.parse_args(argv)
    from edgekit.data.datasets import open_dataset

    category, bundles = _bundles(args.workdir, args.precision)
    dataset = open_dataset(category)
    normals = args.workdir / "normals"
    shutil.rmtree(normals, ignore_errors=True)
    normals.mkdir()
    for sample in dataset.train[: args.images]:
        shutil.copyfile(sample.path, normals / sample.path.name)
    fitted: dict[str, Path] = {}
    for runtime, bundle in bundles.items():
        fitted[f"x86 {runtime}"] = args.workdir / f"fitted-x86-{runtime}-{args.precision}"
        subprocess.run(
            [sys.executable, "-c", FIT, str(bundle), str(normals), str(fitted[f"x86 {runtime}"])], check=True
        )
    if args.arm.is_file():
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        fitted["arm litert"] = args.workdir / f"fitted-arm-litert-{args.precision}"
        subprocess.run(
            [str(args.arm), "-c", FIT, str(bundles["litert"]), str(normals), str(fitted["arm litert"])],
            check=True,
            env=env,
        )
    test = [s.path for s in dataset.test]
    labels = np.array([s.label for s in dataset.test])
    print(f"# edgekit fit: {args.images} brick normals, rpi4 {args.precision} bundles\n")
    print("| fitted banks | rows shared | first pick that differs | image scores, largest difference | AUROC |")
    print("|---|---:|---:|---:|---|")
    names = list(fitted)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            print(f"| {first} vs {second} | {_compare(fitted[first], fitted[second], test, labels)}")
    print("\n" + json.dumps({name: str(path) for name, path in fitted.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
