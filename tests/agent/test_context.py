"""The context a host serves: a managed llama-server sized per slot (config, ``join
--ctx-size``, ``demo --ctx-size``), what the backends say they serve (llama.cpp's
``/props``, Ollama's ``/api/ps`` and ``/api/show``, the fakes answering as the real
servers document), and a backend's context overflow passed on as counts."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from typer.testing import CliRunner

from andy_host.agent.backends.base import context_counts
from andy_host.agent.backends.llamacpp import LlamaCppBackend
from andy_host.agent.backends.ollama import OllamaBackend
from andy_host.agent.managed import ManagedLlamaServer
from andy_host.cli import app
from andy_host.config import BackendConfig, Config, load_config, validate_backend
from andy_host.errors import CONTEXT_EXCEEDED, BackendError, ConfigError
from andy_host.protocol import ChatRequest, Message
from tests.harness import inproc


def managed_config(tmp_path: Path, **fields: Any) -> BackendConfig:
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    return BackendConfig(kind="llamacpp", managed=True, model=str(model), llama_server=str(binary), **fields)


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_the_managed_llama_server_gets_the_context_per_slot(tmp_path: Path) -> None:
    """llama-server splits -c across its -np slots: ctx_size is what each request gets."""
    cmd = ManagedLlamaServer(managed_config(tmp_path, ctx_size=8192, parallel=3), port=9).command()
    assert (flag(cmd, "-c"), flag(cmd, "-np")) == ("24576", "3")
    default = ManagedLlamaServer(managed_config(tmp_path), port=9).command()
    assert (flag(default, "-c"), flag(default, "-np")) == ("16384", "2")  # 8192 a slot, 2 slots


@pytest.mark.parametrize("ctx_size", [0, -1, 255, (1 << 20) + 1])
def test_a_context_out_of_bounds_is_a_clear_error(ctx_size: int) -> None:
    with pytest.raises(ConfigError, match=r"backend.ctx_size \(--ctx-size\) is the context per slot"):
        validate_backend(BackendConfig(ctx_size=ctx_size))
    with pytest.raises(ConfigError, match=r"backend\.parallel"):
        validate_backend(BackendConfig(parallel=0))


def test_ctx_size_from_the_environment_and_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[backend]\nctx_size = 4096\n")
    assert load_config(config).backend.ctx_size == 4096
    monkeypatch.setenv("ANDY_HOST_BACKEND_CTX_SIZE", "12288")
    assert load_config(config).backend.ctx_size == 12288
    monkeypatch.setenv("ANDY_HOST_BACKEND_CTX_SIZE", "12")
    with pytest.raises(ConfigError, match="context per slot"):
        load_config(config)


def test_join_and_demo_take_ctx_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_agent(config: Config, reload: Any) -> int:
        seen["join"] = config.backend
        return 0

    def fake_demo(host: str, port: int, threads: int, ctx_size: int, **_: Any) -> int:
        seen["demo"] = ctx_size
        validate_backend(BackendConfig(ctx_size=ctx_size))
        return 0

    monkeypatch.setattr("andy_host.agent.daemon.run_agent_forever", fake_agent)
    monkeypatch.setattr("andy_host.demo.run_demo", fake_demo)
    monkeypatch.setattr("andy_host.logs.configure", lambda *_: None)  # not onto the runner's stdout, closed after
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    runner = CliRunner()
    joined = runner.invoke(app, ["join", "--coordinator", "http://127.0.0.1:1", "--ctx-size", "16384",
                                 "--state-dir", str(tmp_path / "state")])
    assert joined.exit_code == 0, joined.output
    assert seen["join"].ctx_size == 16384
    refused = runner.invoke(app, ["join", "--coordinator", "http://127.0.0.1:1", "--ctx-size", "100"])
    assert refused.exit_code == 2 and "context per slot" in refused.output
    assert runner.invoke(app, ["demo", "--ctx-size", "12288"]).exit_code == 0
    assert seen["demo"] == 12288
    assert runner.invoke(app, ["demo"]).exit_code == 0
    assert seen["demo"] >= 8192  # a real Mindcraft prompt (about 2,200 tokens) and some turns
    bad = runner.invoke(app, ["demo", "--ctx-size", "7"])
    assert bad.exit_code == 2 and "context per slot" in bad.output


async def discover(kind: str, url: str) -> list[Any]:
    backend_class = LlamaCppBackend if kind == "llamacpp" else OllamaBackend
    async with aiohttp.ClientSession() as session:
        backend = backend_class(url, session, BackendConfig(kind=kind, url=url))
        return [d.info for d in await backend.discover()]


async def test_a_llamacpp_host_advertises_a_slots_context_from_props() -> None:
    async with inproc.fake("llamacpp", ctx_size=2048) as url:
        [info] = await discover("llamacpp", url)
    assert (info.served_context, info.context_length) == (2048, 8192)  # served, trained
    async with inproc.fake("llamacpp", ctx_size=32768, n_ctx_train=8192) as url:
        [info] = await discover("llamacpp", url)
    assert info.served_context == 8192  # llama-server caps a slot at the training context


async def test_an_ollama_host_advertises_the_context_it_loaded_the_model_with() -> None:
    async with inproc.fake("ollama", num_ctx=6144) as url:
        [info] = await discover("ollama", url)
    assert (info.served_context, info.context_length, info.loaded) == (6144, 8192, True)  # /api/ps
    async with inproc.fake("ollama", num_ctx=16384, nothing_loaded=True, modelfile_num_ctx=True) as url:
        [info] = await discover("ollama", url)
    assert info.served_context == 8192  # the Modelfile's num_ctx, capped at the trained context
    async with inproc.fake("ollama", nothing_loaded=True) as url:
        [info] = await discover("ollama", url)
    assert info.served_context is None  # the server's default is not told: not known


async def test_a_context_overflow_comes_with_the_backends_counts() -> None:
    request = ChatRequest(messages=[Message(role="user", content="w " * 3000)])
    async with inproc.fake("llamacpp", ctx_size=2048) as url, aiohttp.ClientSession() as session:
        backend = LlamaCppBackend(url, session, BackendConfig(kind="llamacpp", url=url))
        for stream in (False, True):
            request.stream = stream
            with pytest.raises(BackendError) as err:
                async for _ in backend.chat("m:latest", request):
                    pass
            assert (err.value.status, err.value.code) == (400, CONTEXT_EXCEEDED)
            assert (err.value.prompt_tokens, err.value.context) == (3004, 2048)


def test_only_llamacpps_own_overflow_body_gives_counts() -> None:
    body = '{"error": {"code": 400, "type": "exceed_context_size_error", "message": "m", '
    assert context_counts(body + '"n_prompt_tokens": 9001, "n_ctx": 8192}}') == (9001, 8192)
    for bad in ('"n_prompt_tokens": "9001", "n_ctx": 8192}}', '"n_prompt_tokens": 9001, "n_ctx": true}}',
                '"n_prompt_tokens": -1, "n_ctx": 8192}}', '"n_prompt_tokens": 1e30, "n_ctx": 8192}}'):
        assert context_counts(body + bad) is None
    assert context_counts('{"error": {"type": "invalid_request_error", "n_prompt_tokens": 1, "n_ctx": 2}}') is None
    assert context_counts("not json") is None
