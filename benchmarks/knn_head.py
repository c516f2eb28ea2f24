"""PatchCore's kNN head: the shipped fast search against exact search, and the search inside the graph.

    python3 benchmarks/knn_head.py [--workdir DIR] [--runs 40]

One default PatchCore run on the synthetic brick (seed 0, 256², 48 training images; reused from an
earlier call in the same work folder), exported for x86 three times: the default bank (held to the
head budget), 2,000 rows and the whole coreset, all int8 at full width. On the bundle's own
embeddings of the 60 test images (1,024 patches × 152 dims per image):

* accuracy: the shipped head (fast search, exact re-search of each image's worst patches) against
  ``KnnHead(exact=True)``: largest relative difference of image scores and of map values;
* one image's search, timed interleaved with BLAS on one thread (the head's lane): exact search
  (two float32 candidates, float64 pick: the head before this change), the fast search, and the
  search as an OpenVINO graph (MatMul, subtract, TopK 1; fp32, and int8 with FakeQuantize, which
  OpenVINO runs on AMX / VNNI where the CPU has them), each also with the runtime's 2 threads;
* the in-graph int8 search's error: patches whose neighbour is not the exact one, and the largest
  relative distance error after the float64 re-computation;
* a paper estimate for the Pi from the targets' published peaks: what int8 dot products could
  give the search (int8 G ops/s over fp32 GFLOP/s). Labelled as such; emulated timings are not taken.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

BANKS = (("default", None), ("2,000 rows", 2000), ("whole coreset", 10**9))


def _run(workdir: Path):
    from edgekit.data.synth import synthesize
    from edgekit.families.patchcore.train import train_patchcore
    from edgekit.train.run import open_run

    run_dir, category = workdir / "run", workdir / "data" / "brick"
    if (run_dir / "run.json").is_file():
        return open_run(run_dir), category
    synthesize(workdir / "data", texture="brick", seed=0, overwrite=True)
    return train_patchcore(category, run_dir, overwrite=True, evaluate=False), category


def _graph_search(bank: np.ndarray, patches: np.ndarray, *, int8: bool, threads: int):
    """The search as an OpenVINO model: argmin over |b|²/2 − q·b, optionally with int8 operands."""
    import openvino as ov
    import openvino.opset13 as ops

    queries = ops.parameter(list(patches.shape), np.float32, name="patches")
    weights = ops.constant(bank)
    if int8:
        low, high = np.float32(patches.min()), np.float32(patches.max())
        queries_in = ops.fake_quantize(queries, low, high, low, high, 256)
        row_range = np.abs(bank).max(axis=1, keepdims=True).astype(np.float32)
        weights = ops.fake_quantize(weights, -row_range, row_range, -row_range, row_range, 255)
    else:
        queries_in = queries
    half_norms = ops.constant((np.einsum("ij,ij->i", bank, bank) / 2)[None].astype(np.float32))
    partial = ops.subtract(half_norms, ops.matmul(queries_in, weights, False, True))
    found = ops.topk(partial, 1, 1, "min", "none", "i32").output(1)
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(ov.Model([found], [queries]), "CPU", config)
    request = compiled.create_infer_request()
    return lambda image: request.infer({0: image})[0][:, 0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edgekit-knn-head"))
    parser.add_argument("--runs", type=int, default=40, help="Timed calls per search and bank.")
    args = parser.parse_args(argv)
    import threadpoolctl

    import edgekit
    from edgekit.data.datasets import open_dataset
    from edgekit.export.job import ExportOptions
    from edgekit.export.pipeline import export_run
    from edgekit.runtime.bank import nearest_distances, nearest_neighbors
    from edgekit.runtime.heads import KnnHead
    from edgekit.targets import get_target

    run, category = _run(args.workdir)
    test_paths = [s.path for s in open_dataset(category).test]
    print(f"# kNN head: {platform.processor() or platform.machine()}, {len(test_paths)} test images of brick\n")
    print(
        "| bank | rows | score rel. diff (fast vs exact) | map rel. diff | search ms: exact / fast / "
        "OV fp32 / OV int8 (1 thread) | same, 2 threads | int8 graph: wrong neighbour, worst rel. error |"
    )
    print("|---|---:|---:|---:|---|---|---|")
    for label, size in BANKS:
        out = args.workdir / "bundles" / label.replace(" ", "_").replace(",", "")
        options = ExportOptions(bank_dtype="int8", bank_dims="full", bank_size=size) if size else ExportOptions()
        export_run(run.path, out, target="x86", options=options, overwrite=True)
        with edgekit.load(out) as detector:
            embeddings = detector.embed(test_paths)
            head = detector.head
        exact_head = KnnHead(head.memory_bank, head.num_neighbors, head.output_height, head.output_width, exact=True)
        scores, maps = head(embeddings)
        exact_scores, exact_maps = exact_head(embeddings)
        score_diff = float(np.max(np.abs(scores - exact_scores) / np.maximum(exact_scores, 1e-12)))
        map_diff = float(np.max(np.abs(maps - exact_maps) / np.maximum(np.abs(exact_maps), 1e-12)))
        bank = head.memory_bank
        images = [e.transpose(1, 2, 0).reshape(-1, e.shape[0]).copy() for e in embeddings]
        searches = {
            "exact": lambda q: nearest_neighbors(q, bank, bank_sq_norms=head._bank_sq_norms),
            "fast": lambda q: nearest_distances(q, head._bank_t, bank, head._half_sq_norms),
        }
        for threads in (1, 2):
            for int8 in (False, True):
                searches[("int8" if int8 else "fp32", threads)] = _graph_search(
                    bank, images[0], int8=int8, threads=threads
                )
        wrong, worst = [], 0.0
        for q in images:
            exact_d, exact_i = nearest_neighbors(q, bank)
            found = searches[("int8", 1)](q)
            diff = q.astype(np.float64) - bank[found]
            graph_d = np.sqrt(np.einsum("nd,nd->n", diff, diff))
            wrong.append(float(np.mean(found != exact_i)))
            worst = max(worst, float(np.max((graph_d - exact_d) / np.maximum(exact_d, 1e-12))))
        times: dict = {name: [] for name in searches}
        with threadpoolctl.threadpool_limits(1):
            for name, search in searches.items():
                search(images[0])  # warm-up
            for i in range(args.runs):  # interleaved: every search once per round
                for name, search in searches.items():
                    start = time.perf_counter()
                    search(images[i % len(images)])
                    times[name].append((time.perf_counter() - start) * 1e3)
        ms = {name: statistics.median(values) for name, values in times.items()}
        one = " / ".join(f"{ms[k]:.2f}" for k in ("exact", "fast", ("fp32", 1), ("int8", 1)))
        two = f"OV fp32 {ms[('fp32', 2)]:.2f} / int8 {ms[('int8', 2)]:.2f}"
        print(
            f"| {label} | {len(bank):,} | {score_diff:.1e} | {map_diff:.1e} | {one} | {two} | "
            f"{100 * statistics.mean(wrong):.1f} %, {worst:.1e} |"
        )
    print(
        "\nPaper estimate for the Pi (not measured): the search is 2·P·R·D multiply-adds; int8 dot products "
        "could run it at int8 G ops/s instead of fp32 GFLOP/s (targets/*.toml [peak]):"
    )
    for name in ("rpi4", "rpi5"):
        peak = get_target(name).peak or {}
        fp32, int8 = float(peak["fp32_gflops"]), float(peak.get("int8_gops", peak["fp32_gflops"]))
        print(f"- {name}: fp32 {fp32:g} GFLOP/s, int8 {int8:g} G ops/s → at most {int8 / fp32:.1f}× on the search")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
