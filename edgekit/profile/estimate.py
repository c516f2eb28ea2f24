"""Roofline estimates for a target this host is not: labelled "estimate" wherever they appear.

A bundle's time on a device is bounded below, part by part, by max(FLOPs / peak compute,
bytes / peak memory bandwidth), with the peaks the target's toml publishes (and names the source
of). Real kernels reach a fraction of peak, so real latency is higher: an estimate ranks variants
and says what bounds them; it is never a measurement.
"""

from __future__ import annotations

import math

from edgekit.errors import EdgekitError


def roofline_estimate(detector, target) -> dict:
    """Lower-bound latency of one image through ``detector``'s bundle on ``target``'s device."""
    manifest = detector.manifest
    peak = target.peak
    if not peak:
        raise EdgekitError(
            f"target {target.name} publishes no peak throughput (targets/{target.name}.toml "
            f"has no [peak] table), so there is nothing to estimate from"
        )
    network_flops = manifest.export.get("network_flops")
    output_shape = manifest.export.get("output_shape")
    if network_flops is None or not output_shape:
        raise EdgekitError(
            f"bundle {detector.bundle.root} records no FLOP count (exported by an older edgekit); "
            f"re-export it to estimate"
        )
    grid_h, grid_w = int(output_shape[2]), int(output_shape[3])
    spec = manifest.input
    tiles = spec.tile_count  # a tiled input runs the network and the head once per tile
    head_flops, head_bytes = (tiles * part for part in detector.head.cost(grid_h, grid_w))
    network_flops = tiles * network_flops
    weights = sum(detector.bundle.path(name).stat().st_size for name in manifest.network.files)
    network_bytes = weights + tiles * 4 * (spec.height * spec.width * spec.channels + math.prod(output_shape))
    fp32 = float(peak["fp32_gflops"])
    compute = {"int8": float(peak.get("int8_gops", fp32)), "fp16": float(peak.get("fp16_gflops", fp32))}.get(
        manifest.precision, fp32
    )
    bandwidth = float(peak["memory_gb_s"])
    network = _bound(network_flops, network_bytes, compute, bandwidth)
    head = _bound(head_flops, head_bytes, fp32, bandwidth)
    slower = network if network["ms"] >= head["ms"] else head
    return {
        "latency_ms": network["ms"] + head["ms"],
        "network_ms": network["ms"],
        "head_ms": head["ms"],
        "bound": slower["bound"],
        "network_bound": network["bound"],
        "head_bound": head["bound"],
        "flops": int(network_flops + head_flops),
        "network_flops": int(network_flops),
        "head_flops": int(head_flops),
        "bytes": int(network_bytes + head_bytes),
        "peak": {
            "compute_gops": compute,
            "fp32_gflops": fp32,
            "memory_gb_s": bandwidth,
            "source": peak.get("source", f"targets/{target.name}.toml"),
        },
        "method": (
            f"estimate, not measured: roofline lower bound on {target.name} = sum over network and head of "
            f"max(FLOPs / peak compute, bytes / peak bandwidth); network at its precision's peak (fp32 "
            f"{fp32:g} GFLOP/s, int8 {float(peak.get('int8_gops', fp32)):g} G ops/s), numpy head at the fp32 "
            f"peak, {bandwidth:g} GB/s ({peak.get('source', 'target toml')}); real kernels reach a "
            f"fraction of peak, so real latency is higher"
        ),
    }


def _bound(flops: float, moved: float, compute_g: float, bandwidth_g: float) -> dict:
    compute_ms = flops / (compute_g * 1e9) * 1e3
    memory_ms = moved / (bandwidth_g * 1e9) * 1e3
    return {"ms": max(compute_ms, memory_ms), "bound": "compute" if compute_ms >= memory_ms else "memory"}
