"""The owner's limits, checked every ``check_interval`` seconds without the owner watching.

Which models are shared (shell-style allow and deny patterns), a floor of free VRAM,
a ceiling on GPU memory used by other processes (the owner is gaming or training), a
temperature ceiling, and active hours (local time, e.g. ``22:00-08:00``). While any
pause condition holds, the host says ``paused`` with the reasons, finishes running
jobs, takes no new ones, and resumes by itself when they clear.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from typing import Any, NamedTuple

from andy_host.config import ControlsConfig
from andy_host.errors import ConfigError

MiB = 2**20


class Pause(NamedTuple):
    """One reason to pause: a code from protocol.PAUSE_CODES (what the pool shows) and
    the owner's words (the host's log and ``andy-host status``)."""

    code: str
    text: str


def parse_hours(text: str) -> tuple[dt.time, dt.time] | None:
    if not text.strip():
        return None
    try:
        start, end = (dt.time.fromisoformat(part.strip()) for part in text.split("-", 1))
    except ValueError:
        raise ConfigError(f"controls.active_hours must look like 22:00-08:00, not {text!r}") from None
    return start, end


def within(hours: tuple[dt.time, dt.time], now: dt.time) -> bool:
    start, end = hours
    if start <= end:
        return start <= now < end
    return now >= start or now < end  # the window wraps past midnight


def shared(name: str, controls: ControlsConfig) -> bool:
    """Is this model shared? ``llama3*`` matches ``llama3.2:latest``; so does ``llama3.2``."""
    short = name.removesuffix(":latest")

    def hit(pattern: str) -> bool:
        return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(short, pattern)

    if controls.share_models and not any(hit(p) for p in controls.share_models):
        return False
    return not any(hit(p) for p in controls.deny_models)


def pause_reasons(controls: ControlsConfig, sample: dict[str, Any], now: dt.datetime | None = None) -> list[Pause]:
    reasons = []
    hours = parse_hours(controls.active_hours)
    local = (now or dt.datetime.now()).time()
    if hours is not None and not within(hours, local):
        reasons.append(Pause("active_hours", f"outside active hours {controls.active_hours}"))
    for gpu in sample.get("gpus", []):
        reasons += _gpu_reasons(controls, gpu)
    return reasons


def _gpu_reasons(controls: ControlsConfig, gpu: dict[str, Any]) -> list[Pause]:
    label = f"GPU {gpu.get('index')}"
    if gpu.get("error"):
        return [Pause("gpu_error", f"{label} in error: {gpu['error']}")]
    reasons = []
    free = gpu.get("memory_free")
    if controls.min_free_vram_mib and isinstance(free, int) and free < controls.min_free_vram_mib * MiB:
        reasons.append(Pause("vram_low", f"{label} has {free // MiB} MiB free, below the floor of "
                                         f"{controls.min_free_vram_mib} MiB"))
    foreign = gpu.get("other_processes_memory")
    if controls.max_foreign_vram_mib and isinstance(foreign, int) and foreign > controls.max_foreign_vram_mib * MiB:
        reasons.append(Pause("vram_foreign", f"{label}: other processes use {foreign // MiB} MiB (owner busy)"))
    temperature = gpu.get("temperature")
    if controls.max_temperature and isinstance(temperature, int) and temperature >= controls.max_temperature:
        reasons.append(Pause("gpu_hot", f"{label} at {temperature}°C, at or over the ceiling of "
                                        f"{controls.max_temperature}°C"))
    return reasons
