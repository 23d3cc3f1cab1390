"""The JavaScript clients Mindcraft uses, run for real: ``node`` runs a script from
``tests/js/`` (the ``openai`` npm package v4, the ``ollama`` npm package, or plain
``fetch``) against a pool, and its last line of stdout is the JSON result.

The packages are installed by ``scripts/setup --test`` (``npm ci`` in ``tests/js``, from
its lock file). The script runs as a subprocess of the test's event loop, so an
in-process pool keeps serving while it waits.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

JS_DIR = Path(__file__).resolve().parents[1] / "js"


def ready() -> str | None:
    """None when node and the packages are there, else why not (for a skip... or a failure in CI)."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (JS_DIR / "node_modules" / "openai").is_dir():
        return "tests/js/node_modules is missing: run scripts/setup --test"
    return None


async def run(script: str, *args: str, limit: float = 120, **env: str) -> Any:
    """Run ``tests/js/<script> args...`` with ``env`` added; the JSON its last stdout line holds."""
    problem = ready()
    if problem is not None:
        raise RuntimeError(problem)
    proc = await asyncio.create_subprocess_exec(
        "node", str(JS_DIR / script), *args, cwd=JS_DIR, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"node {script} exited {proc.returncode}:\n{err.decode()[-3000:]}\n{out.decode()[-2000:]}")
    return json.loads(lines[-1])
