"""PaDiM's side of an export: which network goes into the graph, which arrays into the head.

The network is the backbone and the embedding (each level's share of the random channel subset,
nearest resize to the first level's grid, concatenation): it outputs N×d×h×w. The per-position
Gaussians (μ: h·w×d float32; Σ⁻¹: h·w×d×d float16, widened to float32 on load) and the
Mahalanobis distance, up-sampling, blur and maximum stay in numpy on the device
(:class:`edgekit.runtime.heads.MahalanobisHead`) and never pass through a network quantizer.
benchmarks/padim_head.py measures this split against the distance inside the OpenVINO graph.
"""

from __future__ import annotations

from edgekit.bundle import HeadSpec
from edgekit.export.job import ExportOptions, FamilyParts
from edgekit.train.run import Run

HEAD_DIR = "head"
SPLIT = (
    "network: backbone, channel subset, nearest resize, concatenation (N x d x h x w); "
    "numpy head: Mahalanobis distance per position, bilinear up-sampling, Gaussian blur, maximum"
)


def padim_parts(run: Run, options: ExportOptions) -> FamilyParts:
    """The run's embedding network and its Gaussians as head arrays."""
    from edgekit.families.padim.train import BLUR_SIGMA, HEAD_DTYPE, head_arrays, load_network

    named = head_arrays(run, HEAD_DTYPE)
    paths = {name: f"{HEAD_DIR}/{name}.npy" for name in named}
    arrays = {paths[name]: array for name, array in named.items()}
    config = run.config
    params = {
        "blur_sigma": float(config.get("blur_sigma", BLUR_SIGMA)),
        "dims": int(config["dims"]),
        "grid": [int(v) for v in config["grid"]],
        "regularisation": float(config["regularisation"]),
        "channels_total": int(config["channels_total"]),
        "seed": int(config.get("seed", 0)),
        "dtype": HEAD_DTYPE,
    }
    head_bytes = sum(int(array.nbytes) for array in arrays.values())
    head = HeadSpec(kind="mahalanobis", params=params, arrays=paths)
    return FamilyParts(
        network=load_network(run), head=head, arrays=arrays, notes={"split": SPLIT, "head_bytes": head_bytes}
    )
