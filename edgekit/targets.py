"""Targets are data: ``targets/<name>.toml`` says how a device runs a bundle.

A target offers one or more formats (a Raspberry Pi runs TFLite through LiteRT or ONNX through
onnxruntime); each format names its runtime, precisions and input layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from edgekit.errors import EdgekitError
from edgekit.resources import names, read_toml


@dataclass(frozen=True)
class FormatSpec:
    name: str
    runtime: str
    precisions: tuple[str, ...]
    default_precision: str
    layout: str = "NCHW"


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    device: str
    threads: int
    formats: dict[str, FormatSpec]
    default_format: str
    cpu: str = ""  # what the device is, in words
    peak: Optional[dict[str, Any]] = None  # published peak throughput, for labelled estimates only
    hosts: tuple[str, ...] = ()  # platform.machine() values of hosts that are this device
    cpu_parts: tuple[str, ...] = ()  # "CPU part" values of /proc/cpuinfo (Arm) that are this device
    mode: str = "latency"  # how a Detector spends its threads by default (edgekit.runtime.threads)

    def format_spec(self, name: Optional[str] = None) -> FormatSpec:
        chosen = name or self.default_format
        if chosen not in self.formats:
            raise EdgekitError(f"target {self.name} offers formats {', '.join(self.formats)}, not {chosen!r}")
        return self.formats[chosen]

    # the default format's fields, for callers that do not choose one
    @property
    def format(self) -> str:
        return self.default_format

    @property
    def runtime(self) -> str:
        return self.format_spec().runtime

    @property
    def precisions(self) -> tuple[str, ...]:
        return self.format_spec().precisions

    @property
    def default_precision(self) -> str:
        return self.format_spec().default_precision

    @property
    def layout(self) -> str:
        return self.format_spec().layout


def host_mismatch(target: Target, *, machine: Optional[str] = None, cpuinfo: Optional[str] = None) -> Optional[str]:
    """Why this host is not ``target``'s device, or None when it is (measurements may be taken)."""
    import platform
    from pathlib import Path

    machine = machine if machine is not None else platform.machine()
    if target.hosts and machine not in target.hosts:
        return f"this machine is {machine}, not {target.name}'s {'/'.join(target.hosts)}"
    if target.cpu_parts:
        if cpuinfo is None:
            try:
                cpuinfo = Path("/proc/cpuinfo").read_text()
            except OSError:
                cpuinfo = ""
        parts = {
            line.partition(":")[2].strip().lower()
            for line in cpuinfo.splitlines()
            if line.lower().startswith("cpu part")
        }
        if parts and not parts & {p.lower() for p in target.cpu_parts}:
            return (
                f"this machine's CPU part is {', '.join(sorted(parts))}, not {target.name}'s "
                f"{', '.join(target.cpu_parts)} ({target.cpu or target.description})"
            )
    return None


def get_target(name: str) -> Target:
    raw = read_toml("targets", name)
    where = f"targets/{name}.toml"
    try:
        formats = {
            fmt: FormatSpec(
                name=fmt,
                runtime=spec["runtime"],
                precisions=tuple(spec["precisions"]),
                default_precision=spec["default_precision"],
                layout=spec.get("layout", "NCHW"),
            )
            for fmt, spec in raw["formats"].items()
        }
        target = Target(
            name=raw["name"],
            description=raw["description"],
            device=raw["device"],
            threads=int(raw.get("threads", 0)),
            formats=formats,
            default_format=raw["default_format"],
            cpu=raw.get("cpu", ""),
            peak=raw.get("peak"),
            hosts=tuple(raw.get("hosts", ())),
            cpu_parts=tuple(raw.get("cpu_parts", ())),
            mode=raw.get("mode", "latency"),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise EdgekitError(f"{where}: field {exc.args[0]!r} is missing or malformed") from None
    from edgekit.runtime.threads import MODES

    if target.mode not in MODES:
        raise EdgekitError(f"{where}: mode must be one of {', '.join(MODES)}, not {target.mode!r}")
    if target.default_format not in formats:
        raise EdgekitError(f"{where}: default_format {target.default_format!r} is not among its formats")
    for fmt in formats.values():
        if fmt.default_precision not in fmt.precisions:
            raise EdgekitError(f"{where}: formats.{fmt.name}.default_precision is not among its precisions")
    return target


def all_targets() -> list[Target]:
    return [get_target(name) for name in names("targets")]
