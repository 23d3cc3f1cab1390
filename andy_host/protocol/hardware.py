"""Hardware readings as a host reports them: fixed records, clamped and cut at decode.

Numbers are clamped to their range, strings cut to their length, lists bounded,
unknown keys dropped: never free nesting. A value of the wrong shape where a list
belongs is a protocol error; a wrong value elsewhere is dropped (None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from andy_host.errors import ProtocolError

MAX_GPUS = 16
MAX_MIG = 8


@dataclass(slots=True)
class MigInstance:
    uuid: str | None = None
    memory_total: int | None = None
    memory_used: int | None = None


@dataclass(slots=True)
class GpuReading:
    """One GPU as NVML describes it; every field optional, numbers in range."""

    index: int = 0
    name: str = "unknown"
    uuid: str | None = None
    memory_total: int | None = None
    memory_used: int | None = None
    memory_free: int | None = None
    utilization_gpu: int | None = None  # percent, 0-100
    utilization_memory: int | None = None
    temperature: int | None = None  # degrees Celsius
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    mig_mode: bool | None = None
    mig_instances: list[MigInstance] = field(default_factory=list)
    other_processes_memory: int | None = None
    error: str | None = None


@dataclass(slots=True)
class HostReading:
    cpu: str = ""
    cores: int = 0
    os: str = ""
    load_1m: float = 0.0
    ram_total: int = 0
    ram_available: int = 0


@dataclass(slots=True)
class Hardware:
    gpus: list[GpuReading] = field(default_factory=list)
    host: HostReading | None = None
    nvml: str = "ok"



def _clamp_int(raw: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(min(max(value, lo), hi))


def _clamp_float(raw: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(min(max(value, lo), hi))


def _cut(raw: dict[str, Any], key: str, max_len: int = 120) -> str | None:
    value = raw.get(key)
    return value[:max_len] if isinstance(value, str) and value else None


def _records(raw: dict[str, Any], key: str, limit: int) -> list[dict[str, Any]]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > limit:
        raise ProtocolError(f"field {key!r} must be a list of at most {limit} records")
    return [item for item in value if isinstance(item, dict)]


BYTES_MAX = 2**50  # a PiB: more than any GPU or host has


def _gpu(raw: dict[str, Any]) -> GpuReading:
    mig = raw.get("mig_mode")
    return GpuReading(
        index=_clamp_int(raw, "index", 0, 1023) or 0,
        name=_cut(raw, "name") or "unknown",
        uuid=_cut(raw, "uuid", 80),
        memory_total=_clamp_int(raw, "memory_total", 0, BYTES_MAX),
        memory_used=_clamp_int(raw, "memory_used", 0, BYTES_MAX),
        memory_free=_clamp_int(raw, "memory_free", 0, BYTES_MAX),
        utilization_gpu=_clamp_int(raw, "utilization_gpu", 0, 100),
        utilization_memory=_clamp_int(raw, "utilization_memory", 0, 100),
        temperature=_clamp_int(raw, "temperature", -50, 200),
        power_draw_w=_clamp_float(raw, "power_draw_w", 0, 100_000),
        power_limit_w=_clamp_float(raw, "power_limit_w", 0, 100_000),
        driver_version=_cut(raw, "driver_version", 40),
        cuda_driver_version=_cut(raw, "cuda_driver_version", 40),
        mig_mode=mig if isinstance(mig, bool) else None,
        mig_instances=[
            MigInstance(_cut(m, "uuid", 80), _clamp_int(m, "memory_total", 0, BYTES_MAX),
                        _clamp_int(m, "memory_used", 0, BYTES_MAX))
            for m in _records(raw, "mig_instances", MAX_MIG)
        ],
        other_processes_memory=_clamp_int(raw, "other_processes_memory", 0, BYTES_MAX),
        error=_cut(raw, "error", 200),
    )


def _host_reading(raw: Any) -> HostReading | None:
    if not isinstance(raw, dict):
        return None
    return HostReading(
        cpu=_cut(raw, "cpu") or "",
        cores=_clamp_int(raw, "cores", 0, 65_536) or 0,
        os=_cut(raw, "os") or "",
        load_1m=_clamp_float(raw, "load_1m", 0, 1e6) or 0.0,
        ram_total=_clamp_int(raw, "ram_total", 0, BYTES_MAX) or 0,
        ram_available=_clamp_int(raw, "ram_available", 0, BYTES_MAX) or 0,
    )


def read_hardware(raw: Any) -> Hardware:
    """Typed readings out of a hardware object: the agent's own probe, or a host's frame."""
    if raw is None:
        return Hardware()
    if not isinstance(raw, dict):
        raise ProtocolError("field 'hardware' must be an object")
    return Hardware(
        gpus=[_gpu(g) for g in _records(raw, "gpus", MAX_GPUS)],
        host=_host_reading(raw.get("host")),
        nvml=_cut(raw, "nvml", 200) or "ok",
    )


