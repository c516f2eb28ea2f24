"""PatchCore's side of an export: which network goes into the graph, which arrays into the head.

The backbone and the embedding (3×3 pooling, resize, concatenation) are the network, followed,
when the bank is PCA-compressed, by the projection folded in as a 1×1 convolution, so the
device computes only the ``d``-dimensional features the bank lives in. The memory bank (in
float32, float16 or int8 with per-dimension scales) and the kNN scoring stay in numpy on the
device and never pass through a network quantizer.
"""

from __future__ import annotations

from dataclasses import replace

from edgekit.bundle import HeadSpec
from edgekit.compress.pca import DEFAULT_BANK, BankSettings, Pca, wants_residual
from edgekit.errors import EdgekitError
from edgekit.export.job import ExportOptions, FamilyParts, count_flops
from edgekit.runtime.bank import BANK_DTYPES
from edgekit.train.run import Run

HEAD_DIR = "head"
BANK_FILE = f"{HEAD_DIR}/memory_bank.npy"


def bank_settings(options: ExportOptions) -> BankSettings:
    """The export's bank: DEFAULT_BANK when no --bank-* option is given; otherwise exactly what
    the options say, an unset one meaning "as trained" (all dimensions, float32, every row)."""
    if options.bank_dims is None and options.bank_dtype is None and options.bank_size is None:
        return DEFAULT_BANK
    dtype = options.bank_dtype or "float32"
    if dtype not in BANK_DTYPES:
        raise EdgekitError(f"--bank-dtype must be one of {', '.join(BANK_DTYPES)}, not {dtype!r}")
    if options.bank_size is not None and options.bank_size < 1:
        raise EdgekitError(f"--bank-size must be at least 1, not {options.bank_size}")
    return BankSettings(dims=str(options.bank_dims or "full"), dtype=dtype, size=options.bank_size)


def fold_projection(network, pca: Pca):
    """``network`` followed by the PCA projection as a 1×1 convolution (weight W, bias −W μ) and,
    with ``pca.residual``, the residual energy as one more channel."""
    import torch
    from torch import nn

    from edgekit.families.patchcore.train import WithResidual

    conv = nn.Conv2d(pca.input_dims, pca.dims, kernel_size=1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(pca.weight())[:, :, None, None])
        conv.bias.copy_(torch.from_numpy(pca.bias()))
    if not pca.residual:
        return nn.Sequential(network, conv).eval()
    return WithResidual(network, conv, torch.from_numpy(pca.mean.astype("float32"))).eval()


#: The default bank's head budget: its exact kNN search may cost at most this share of the
#: network's FLOPs. numpy's search ran at ~0.6x the FLOP rate of OpenVINO's fp32 network here
#: (2-core Xeon), so the default head stays within the network's time (README, "The memory bank").
HEAD_FLOPS_SHARE = 0.5


def head_budget(run: Run, network) -> dict:
    """The most bank rows whose kNN FLOPs (2 · patches · rows · dims per image) stay within
    HEAD_FLOPS_SHARE of the network's, with the figures it came from."""
    import torch

    size = run.input_spec()
    flops, _ = count_flops(network, torch.zeros(1, size.channels, size.height, size.width))
    grid_h, grid_w = run.config["grid"]
    dims = int(run.config["feature_dims"])
    rows = max(1, int(HEAD_FLOPS_SHARE * flops // (2 * grid_h * grid_w * dims)))
    return {"network_flops": flops, "flops_share": HEAD_FLOPS_SHARE, "rows": rows}


def patchcore_parts(run: Run, options: ExportOptions) -> FamilyParts:
    """The run's embedding network (+ folded PCA) and its bank compressed as the options say; the
    default bank also within the head budget."""
    from edgekit.families.patchcore.train import compressed_bank, load_network

    network = load_network(run)
    settings = bank_settings(options)
    if wants_residual(settings.dims) and options.precision == "int8":
        raise EdgekitError(
            f"--bank-dims {settings.dims} needs an fp32 or fp16 network: its residual channel does not survive int8 "
            f"(defect scores moved up to 33 %); use --precision fp32, or --bank-dims {settings.dims[:-2]} without +r"
        )
    budget = head_budget(run, network) if settings == DEFAULT_BANK else None
    if budget is not None:
        settings = replace(settings, most=budget["rows"])
    compressed = compressed_bank(run, settings)
    if compressed.pca is not None:
        network = fold_projection(network, compressed.pca)
    paths = {name: f"{HEAD_DIR}/{name}.npy" for name in compressed.arrays}
    uncompressed_bytes = int(run.config["bank_rows"]) * int(run.config["feature_dims"]) * 4
    bank = {
        **compressed.description,
        "bytes": compressed.nbytes,
        "smaller_than_uncompressed": round(uncompressed_bytes / compressed.nbytes, 2),
        "settings": {
            "dims": settings.dims,
            "dtype": settings.dtype,
            "size": settings.size,
            "share": settings.share,
            **({"most": settings.most} if settings.most is not None else {}),
        },
        **({"head_budget": budget} if budget is not None else {}),
    }
    params = {
        "num_neighbors": int(run.config["num_neighbors"]),
        "blur_sigma": 4.0,
        "coreset_ratio": float(run.config["coreset_ratio"]),
        "seed": int(run.config.get("seed", 0)),
        **({"coreset_rows": int(run.config["coreset_rows"])} if run.config.get("coreset_rows") else {}),
        "bank": bank,
    }
    head = HeadSpec(kind="knn", params=params, arrays=paths)
    return FamilyParts(
        network=network,
        head=head,
        arrays={paths[name]: array for name, array in compressed.arrays.items()},
        notes={"bank": bank},
    )
