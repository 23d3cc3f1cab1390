"""CORS in a real browser: headless Chromium loads a page from one origin whose script
calls the pool's chat completions on another (the coordinator's), with an
Authorization header, so the browser sends a preflight first. Allowed, the answer is
written into the page; from an origin not in ``cors_origins``, the browser blocks it."""

from __future__ import annotations

import asyncio
import shutil
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.harness import inproc

PAGE = """<!doctype html><html><body><div id="out">waiting</div><script>
fetch("%(api)s/api/andy/v1/chat/completions", {method: "POST",
  headers: {"Content-Type": "application/json", "Authorization": "Bearer %(key)s", "X-Request-Id": "from-browser"},
  body: JSON.stringify({model: "m", messages: [{role: "user", content: "hello browser"}]})})
 .then(r => r.json().then(b => { document.getElementById("out").textContent =
    "answer:" + b.choices[0].message.content + "|id:" + r.headers.get("X-Request-Id"); }))
 .catch(e => { document.getElementById("out").textContent = "blocked:" + e; });
</script></body></html>"""


def page_server(target: dict[str, str]) -> TestServer:
    """Serves the page; ``target`` (the pool's URL and key) is filled in once the pool runs."""
    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE % target, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    return TestServer(app, host="127.0.0.1")


async def dump_dom(url: str, profile: Path) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed: scripts/setup installs it (apt-get install chromium)")
    proc = await asyncio.create_subprocess_exec(
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        "--virtual-time-budget=5000", "--dump-dom", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)  # the loop keeps serving the pool meanwhile
    return out.decode()


@pytest.mark.parametrize("allowed", [True, False], ids=["allowed-origin", "other-origin"])
async def test_a_browser_page_calls_the_pool_across_origins(tmp_path: Path, allowed: bool) -> None:
    async with AsyncExitStack() as stack:
        backend = await stack.enter_async_context(inproc.fake("ollama", models="m:latest", label="ollama"))
        target: dict[str, str] = {}
        pages = await stack.enter_async_context(page_server(target))
        origin = str(pages.make_url("")).rstrip("/")
        pool = await stack.enter_async_context(inproc.coordinator(
            tmp_path, cors_origins=[origin if allowed else "https://elsewhere.example"]))
        target.update(api=pool.url, key=pool.key)
        await stack.enter_async_context(inproc.agent(pool, "ollama", backend, "host"))
        await pool.models({"m:latest": 1})
        dom = await dump_dom(origin + "/", tmp_path / "chromium")
    if allowed:
        assert "answer:ollama heard: hello browser|id:from-browser" in dom, dom[-2000:]
    else:
        assert "blocked:" in dom and "heard" not in dom, dom[-2000:]
