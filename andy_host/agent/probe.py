"""``andy-host probe``: the first command a contributor runs when something is wrong.

GPUs (NVML), the backend (reachable? version?), its models with size, quantization
and context length (Ollama's ``/api/show``, llama.cpp's ``/props`` and ``/v1/models``),
and which of them the owner's controls would share. Every failure names its fix.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

from andy_host.agent.backends import make_backend
from andy_host.agent.controls import pause_reasons, shared
from andy_host.agent.hardware import HardwareProbe
from andy_host.config import Config
from andy_host.errors import BackendError

FIXES = {
    "ollama": "Ollama is not reachable at {url} — is `ollama serve` running? (or pass --backend-url)",
    "llamacpp": "llama-server is not reachable at {url} — is it running (`llama-server -m MODEL --port PORT`)? "
                "(or pass --backend-url, or join with --managed)",
}


async def run_probe(config: Config) -> dict[str, Any]:
    hardware = HardwareProbe()
    try:
        sample = hardware.sample()
    finally:
        hardware.close()
    url = config.backend.effective_url()
    report: dict[str, Any] = {
        "gpus": sample["gpus"], "host": sample["host"], "nvml": sample["nvml"],
        "backend": {"kind": config.backend.kind, "url": url, "reachable": False, "version": None, "error": None},
        "models": [], "pause_reasons": pause_reasons(config.controls, sample),
    }
    async with aiohttp.ClientSession() as session:
        backend = make_backend(config.backend, session, url)
        try:
            found = await backend.discover()
            version = await backend.version()
        except BackendError:
            report["backend"]["error"] = FIXES[config.backend.kind].format(url=url)
            return report
        report["backend"]["reachable"] = True
        report["backend"]["version"] = version
        report["models"] = [
            {"name": d.info.name, "backend_id": d.backend_id, "size": d.info.size,
             "quantization": d.info.quantization, "context_length": d.info.context_length,
             "loaded": d.info.loaded, "embeddings": d.info.embed, "shared": shared(d.info.name, config.controls)}
            for d in found
        ]
    return report


def print_report(report: dict[str, Any]) -> None:
    console = Console()
    gpus = Table(title="GPUs", title_justify="left")
    for column in ("#", "name", "memory", "util", "temp", "power", "driver / CUDA", "MIG", "others' memory"):
        gpus.add_column(column)
    for g in report["gpus"]:
        if g.get("error"):
            gpus.add_row(str(g["index"]), g.get("name", "?"), f"[red]ERROR: {g['error']}[/red]", "", "", "", "", "", "")
            continue
        gib = 2**30
        gpus.add_row(
            str(g["index"]), g["name"], f"{g['memory_used'] / gib:.1f} / {g['memory_total'] / gib:.1f} GiB",
            f"{g['utilization_gpu']}%", f"{g['temperature']}°C",
            f"{g['power_draw_w']:.0f} / {g['power_limit_w']:.0f} W",
            f"{g['driver_version']} / {g['cuda_driver_version']}",
            "on: " + str(len(g.get("mig_instances", []))) + " instances" if g.get("mig_mode") else "off",
            "?" if g.get("other_processes_memory") is None else f"{g['other_processes_memory'] / 2**20:.0f} MiB",
        )
    if report["gpus"]:
        console.print(gpus)
    else:
        console.print(f"[yellow]No GPU:[/yellow] {report['nvml']}")
    host = report["host"]
    console.print(f"Host: {host['cpu']}, {host['cores']} cores, load {host['load_1m']}, "
                  f"{host['ram_available'] / 2**30:.1f} of {host['ram_total'] / 2**30:.1f} GiB RAM free, {host['os']}")
    backend = report["backend"]
    if backend["reachable"]:
        console.print(f"Backend: {backend['kind']} at {backend['url']}, reachable, version {backend['version'] or '?'}")
    else:
        console.print(f"[red]Backend: {backend['error']}[/red]")
    if report["models"]:
        models = Table(title="Models", title_justify="left")
        for column in ("name", "size", "quantization", "context", "loaded", "shared"):
            models.add_column(column)
        for m in report["models"]:
            size = f"{m['size'] / 2**30:.2f} GiB" if m["size"] else "?"
            models.add_row(m["name"], size, m["quantization"] or "?", str(m["context_length"] or "?"),
                           "yes" if m["loaded"] else "no", "[green]yes[/green]" if m["shared"] else "[red]no[/red]")
        console.print(models)
    elif backend["reachable"]:
        console.print("[yellow]The backend serves no model: pull one (ollama pull MODEL) or start llama-server "
                      "with -m MODEL.[/yellow]")
    for reason in report["pause_reasons"]:
        console.print(f"[yellow]Would pause now:[/yellow] {reason}")
