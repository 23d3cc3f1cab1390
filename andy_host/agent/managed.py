"""A llama-server the agent starts, watches, restarts with backoff and always stops.

The child gets ``PR_SET_PDEATHSIG`` (Linux), so even a SIGKILLed agent leaves no
orphan llama-server behind; every other exit path stops it explicitly.
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import socket
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import structlog

from andy_host.agent.backends.llamacpp import healthy
from andy_host.agent.link import Backoff
from andy_host.config import BackendConfig
from andy_host.errors import ManagedError
from andy_host.tools.llama_build import find_llama_server
from andy_host.tools.model import PYPI_MODELS, ensure_model

log = structlog.get_logger("andy_host.managed")





def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def model_alias(config: BackendConfig) -> str:
    if config.model_name:
        return config.model_name
    if config.model in PYPI_MODELS:
        return config.model
    return Path(config.model).stem


class ManagedLlamaServer:
    def __init__(self, config: BackendConfig, port: int | None = None) -> None:
        self.config = config
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.output: deque[str] = deque(maxlen=40)
        self.restarts = 0
        self._stopping = False
        self._reader: asyncio.Task[None] | None = None

    def command(self) -> list[str]:
        binary = find_llama_server(self.config.llama_server or None)
        if binary is None:
            where = self.config.llama_server or "PATH or the andy-host cache"
            raise ManagedError(
                f"llama-server not found in {where}: run python -m andy_host.tools.llama_build "
                "(builds it from source, about 10 minutes) or set backend.llama_server"
            )
        model = ensure_model(self.config.model)
        cmd = [
            str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
            # -c is the whole KV cache, split across the -np slots: ctx_size is per slot
            "-c", str(self.config.ctx_size * self.config.parallel), "-np", str(self.config.parallel),
            "--alias", model_alias(self.config),
        ]
        if self.config.threads > 0:
            cmd += ["-t", str(self.config.threads)]
        if self.config.chat_template:  # only when asked: the model's own template is the right one
            cmd += ["--chat-template", self.config.chat_template]
        if self.config.embeddings:
            cmd += ["--embeddings", "--pooling", "mean"]
        return cmd + list(self.config.extra_args)

    async def start(self) -> None:
        cmd = self.command()
        log.info("llama_server.starting", port=self.port, cmd=" ".join(cmd))
        self.proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self._reader = asyncio.create_task(self._read_output(self.proc))
        await self._wait_healthy(self.proc)
        log.info("llama_server.ready", port=self.port, pid=self.proc.pid)

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            self.output.append(raw.decode(errors="replace").rstrip())

    async def _wait_healthy(self, proc: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.startup_timeout
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while loop.time() < deadline:
                if proc.returncode is not None:
                    tail = "\n".join(list(self.output)[-15:])
                    raise ManagedError(f"llama-server exited with code {proc.returncode}:\n{tail}")
                if await healthy(session, self.url):
                    return
                await asyncio.sleep(0.2)
        raise ManagedError(f"llama-server was not healthy within {self.config.startup_timeout:.0f}s")

    async def supervise(self, on_change: Callable[[], Awaitable[None]]) -> None:
        """Restart llama-server with backoff whenever it dies; tell the agent each time."""
        backoff = Backoff(self.config.restart_backoff_min, self.config.restart_backoff_max)
        while not self._stopping:
            proc = self.proc
            if proc is not None:
                code = await proc.wait()
                if self._stopping:
                    return
                log.warning("llama_server.died", code=code, tail=list(self.output)[-3:])
            await on_change()  # the catalog sees the backend down; the coordinator is told
            delay = backoff.next()
            await asyncio.sleep(delay)
            try:
                await self.start()
                self.restarts += 1
                backoff.reset()
            except ManagedError as exc:
                log.error("llama_server.restart_failed", error=str(exc))
                await self._terminate()
                continue
            await on_change()

    async def _terminate(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def stop(self) -> None:
        self._stopping = True
        await self._terminate()
        if self._reader is not None:
            self._reader.cancel()
        log.info("llama_server.stopped", pid=self.proc.pid if self.proc else None)

