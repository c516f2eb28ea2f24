"""PaDiM on x86: the Mahalanobis distance in numpy (shipped) vs inside the OpenVINO graph.

    python3 benchmarks/padim_head.py [--run RUN] [--workdir DIR] [--images 20] [--repeats 5]

Without ``--run`` it synthesizes the embedded default (brick, seed 0, 256²) and trains PaDiM with
its defaults. Two variants of the same run, both OpenVINO CPU fp32 (f32 hint), measured side by
side and interleaved image by image (the machine may be shared: the ratio is the figure to read):

- numpy head (shipped): the exported embedding network (N×d×h×w) + MahalanobisHead in numpy —
  exactly ``edgekit.load(bundle).raw([image])``;
- in-graph: the embedding network followed by the distance as a torch module (μ and Σ⁻¹ as graph
  constants, one batched d×d product per position), exported to ONNX → OpenVINO; its (N,1,h,w)
  distance map gets the same up-sampling, blur and maximum in numpy (MapHead).

Printed: median and p90 per image (batch 1, pre-processing included) of the whole path and of the
distance alone (numpy MahalanobisHead.distances vs an IR holding only the distance module), the
ratios, and the largest score difference between the two variants. Timing: time.perf_counter,
after 3 warm-up images, threads = OpenVINO's and numpy's defaults.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekit.preprocess import prepare  # noqa: E402


def _run(args, workdir: Path):
    from edgekit.train.run import open_run

    if args.run:
        return open_run(args.run)
    from edgekit.data.synth import synthesize
    from edgekit.families.padim.train import train_padim

    (category,) = synthesize(workdir / "data", texture="brick", seed=0)
    print("training PaDiM on the brick default ...", flush=True)
    return train_padim(category, workdir / "run")


def _compile(module, example, path: Path):
    import openvino as ov

    from edgekit.export.onnx import torch_to_onnx
    from edgekit.export.openvino import onnx_to_openvino

    onnx_path = torch_to_onnx(module, example, path.with_suffix(".onnx"), input_name="x", output_names=("y",))
    out_dir = path.parent / path.stem
    out_dir.mkdir(exist_ok=True)
    xml = onnx_to_openvino(onnx_path, out_dir)[0]
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}  # as the OpenVINO backend
    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    request = compiled.create_infer_request()
    return lambda batch: np.array(request.infer({"x": batch})[compiled.outputs[0]])


def _summary(times: list[float]) -> tuple[float, float]:
    values = np.array(times) * 1000
    return float(np.median(values)), float(np.percentile(values, 90))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="A PaDiM run (default: train one on brick).")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--images", type=int, default=20, help="Test images timed per repeat.")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="padim-head-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        measure(_run(args, workdir), workdir, args)


def measure(run, workdir: Path, args) -> None:
    """Export, build both variants, time them interleaved and print the table."""
    import torch
    from torch import nn

    from edgekit.export.pipeline import export_run
    from edgekit.families.padim.train import HEAD_DTYPE, MahalanobisDistance, head_arrays, load_network
    from edgekit.runtime.detector import load
    from edgekit.runtime.heads import MapHead

    images = sorted(Path(run.config["dataset"]["path"]).glob("test/*/*.png"))[: args.images]
    print(
        f"run {run.path}: d={run.config['dims']}, grid {run.config['grid']}, Σ⁻¹ {HEAD_DTYPE} in the bundle", flush=True
    )

    bundle = workdir / "bundle-x86"
    export_run(run.path, bundle, target="x86", overwrite=True)
    detector = load(bundle)
    spec = detector.manifest.input
    size = int(run.config["image_size"])
    arrays = head_arrays(run, HEAD_DTYPE)  # the same (float16-rounded) statistics in both variants
    distance = MahalanobisDistance(arrays["mean"], arrays["inv_covariance"].astype(np.float32)).eval()
    example = torch.zeros(1, 3, size, size)
    in_graph = _compile(nn.Sequential(load_network(run), distance).eval(), example, workdir / "in_graph.xml")
    maps = MapHead(
        output_height=size,
        output_width=size,
        score="max",
        blur_sigma=float(detector.manifest.head.params["blur_sigma"]),
    )
    dims, (grid_h, grid_w) = int(run.config["dims"]), run.config["grid"]
    distance_only = _compile(distance, torch.zeros(1, dims, grid_h, grid_w), workdir / "distance_only.xml")

    def numpy_path(image):
        return detector.raw([image])[0]

    def graph_path(image):
        return maps(in_graph(prepare([image], spec)))[0]

    embeddings = {str(image): detector.embed([image]) for image in images}
    variants = {"numpy head (shipped)": numpy_path, "in-graph distance": graph_path}
    parts = {"numpy distance": lambda e: detector.head.distances(e), "OpenVINO distance": distance_only}
    for function in variants.values():
        for image in images[:3]:
            function(image)
    for function in parts.values():
        for image in images[:3]:
            function(embeddings[str(image)])
    whole = {name: [] for name in variants}
    alone = {name: [] for name in parts}
    differences = []
    for _ in range(args.repeats):
        for image in images:
            scores = []
            for name, function in variants.items():
                started = time.perf_counter()
                scores.append(float(function(image)[0]))
                whole[name].append(time.perf_counter() - started)
            differences.append(abs(scores[0] - scores[1]) / scores[0])
            for name, function in parts.items():
                started = time.perf_counter()
                function(embeddings[str(image)])
                alone[name].append(time.perf_counter() - started)
    samples = args.repeats * len(images)
    print(
        f"\nx86 OpenVINO CPU fp32, batch 1, {samples} timed images per variant, interleaved; "
        f"perf_counter after 3 warm-up images"
    )
    for title, table in (
        ("whole path (pre-processing + network + head)", whole),
        ("distance alone (embedding in, distance grid out)", alone),
    ):
        print(f"  {title}:")
        medians = {}
        for name, times in table.items():
            median, p90 = _summary(times)
            medians[name] = median
            print(f"    {name:<22} median {median:8.2f} ms   p90 {p90:8.2f} ms")
        first, second = list(medians)
        print(f"    ratio {second} / {first}: {medians[second] / medians[first]:.2f}")
    print(f"  largest relative score difference between the variants: {max(differences):.2e}")


if __name__ == "__main__":
    main()
