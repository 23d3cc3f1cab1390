"""The docs held true by running them, as datasette's test_docs.py holds its docs:
the README stays short, every relative link (and anchor) in README.md and docs/ points
at something that exists, every ``andy-host`` command line the docs show parses with the
real command tree, the README's API table is the coordinator's routes both ways, and
the README's client quick start (curl, the ``openai`` SDK, Mindcraft's base URLs)
answers a chat from an in-process pool with a fake host."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from andy_host.cli import CLICK_ERRORS, command
from andy_host.config import CoordinatorConfig
from andy_host.coordinator.runtime.app import build_app
from tests.harness import inproc
from tests.harness.inproc import Pool

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted([README, *(ROOT / "docs").rglob("*.md")])
EXAMPLE_URL = "http://127.0.0.1:8080"  # the address the README's examples use (the demo's)
OPENAI_PREFIXES = ("/api/andy/v1/", "/api/v1/", "/v1/")  # the README: every /api/andy/v1/ path is under each
# Routes the README's API table leaves out on purpose, with the reason.
OMITTED = {
    ("POST", "/api/andy/internal/jobs"): "between replicas only, with replica_secret (docs/scale.md)",
}
FENCE = re.compile(r"^```(\S*)\s*$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`]+)`")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# --- reading markdown -------------------------------------------------------------------


def split_fences(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The lines outside fenced blocks, and each fenced block as (language, lines)."""
    prose: list[str] = []
    blocks: list[tuple[str, list[str]]] = []
    current: tuple[str, list[str]] | None = None
    for line in text.splitlines():
        fence = FENCE.match(line.strip())
        if current is None and fence:
            current = (fence.group(1), [])
        elif current is not None and line.strip() == "```":
            blocks.append(current)
            current = None
        elif current is not None:
            current[1].append(line)
        else:
            prose.append(line)
    return prose, blocks


def slug(heading: str) -> str:
    """The anchor GitHub makes of a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    prose, _ = split_fences(text)
    seen: dict[str, int] = {}
    found = set()
    for line in prose:
        heading = re.match(r"^#{1,6}\s+(.*)$", line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def link_problems(path: Path, text: str) -> list[str]:
    """Each relative link of ``text`` (the file at ``path``) whose file or anchor is missing."""
    prose, _ = split_fences(text)
    problems = []
    for line in prose:
        for target in LINK.findall(CODE.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            if not file_part:  # an anchor in this page
                if anchor not in anchors(text):
                    problems.append(f"{rel(path)}: {target}: no heading #{anchor} here")
                continue
            where = (path.parent / file_part).resolve()
            if not where.exists():
                problems.append(f"{rel(path)}: {target}: no file {file_part}")
            elif anchor and where.suffix == ".md" and anchor not in anchors(where.read_text()):
                problems.append(f"{rel(path)}: {target}: no heading #{anchor} in {rel(where)}")
    return problems


def command_lines(text: str) -> list[str]:
    """The ``andy-host ...`` lines of the shell blocks (continuations joined, sudo dropped)."""
    _, blocks = split_fences(text)
    lines = []
    for language, body in blocks:
        if language not in ("sh", "bash", "shell", "console"):
            continue
        joined = re.sub(r"\\\n\s*", " ", "\n".join(body))
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ").removeprefix("sudo ")
            if line.startswith("andy-host "):
                lines.append(line)
    return lines


def command_problem(line: str) -> str | None:
    """Why ``line`` does not parse with the real command tree, or None."""
    words = shlex.split(line, comments=True)[1:]
    cmd: Any = command()  # typer's click tree (recent typers carry their own click)
    path = ["andy-host"]
    while hasattr(cmd, "commands") and words and words[0] in cmd.commands:
        path.append(words[0])
        cmd = cmd.commands[words.pop(0)]
    if hasattr(cmd, "commands") and not cmd.invoke_without_command:
        return f"{line}: {' '.join(path)} needs a subcommand, not {words[:1]}"
    known = {opt for param in cmd.params for opt in (*param.opts, *param.secondary_opts)}
    for word in words:
        flag = word.split("=", 1)[0]
        if flag.startswith("-") and flag not in known:
            return f"{line}: {' '.join(path)} has no option {flag}"
    try:
        cmd.make_context(" ".join(path), list(words), resilient_parsing=False)
    except CLICK_ERRORS.ClickException as exc:  # a missing value, a bad type, an extra argument
        return f"{line}: {exc.format_message()}"
    return None


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"no section ## {title}"
    return match.group(1)


def api_rows(text: str) -> list[tuple[list[str], set[str]]]:
    """The README's API table: for each row, its paths and its methods."""
    rows = []
    for line in section(text, "API").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3 or cells[0] in ("endpoint", "---"):
            continue
        rows.append((CODE.findall(cells[0]), {m.strip() for m in cells[1].split(",")}))
    return rows


def coordinator_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the coordinator registers (HEAD and OPTIONS aside)."""
    app = build_app(CoordinatorConfig())
    return {(route.method, route.resource.canonical) for route in app.router.routes()
            if route.method not in ("HEAD", "OPTIONS") and route.resource is not None}


def expand(path: str) -> list[str]:
    if path.startswith(OPENAI_PREFIXES[0]):
        return [prefix + path.removeprefix(OPENAI_PREFIXES[0]) for prefix in OPENAI_PREFIXES]
    return [path]


def table_problems(rows: list[tuple[list[str], set[str]]], routes: set[tuple[str, str]]) -> list[str]:
    """Rows without a route, and routes in no row (nor in OMITTED), both ways."""
    problems = []
    covered: set[tuple[str, str]] = set()
    for paths, methods in rows:
        for documented in paths:
            for path in expand(documented):
                if path.endswith("*"):
                    under = {(m, p) for m, p in routes if p.startswith(path[:-1])}
                    if not under:
                        problems.append(f"row {documented}: no route under it")
                    problems += [f"row {documented}: {m} {p} is not one of {sorted(methods)}"
                                 for m, p in sorted(under) if m not in methods]
                    covered |= under
                    continue
                for method in sorted(methods):
                    if (method, path) not in routes:
                        problems.append(f"row {documented}: no route {method} {path}")
                    covered.add((method, path))
    for method, path in sorted(routes - covered):
        if (method, path) not in OMITTED:
            problems.append(f"route {method} {path} is not in the README's API table (nor in OMITTED)")
    return problems


def blocks_of(text: str, language: str, start: str = "") -> list[str]:
    _, blocks = split_fences(text)
    return ["\n".join(body) for lang, body in blocks if lang == language and "\n".join(body).startswith(start)]


# --- the tests --------------------------------------------------------------------------


def test_readme_is_short() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; the detail belongs in docs/"


@pytest.mark.parametrize("path", DOCS, ids=rel)
def test_relative_links_resolve(path: Path) -> None:
    assert link_problems(path, path.read_text()) == []


def test_readme_links_into_docs() -> None:
    """Every page of docs/ is reachable from the README."""
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in LINK.findall(README.read_text())}
    assert [rel(page) for page in (ROOT / "docs").glob("*.md") if page.resolve() not in linked] == []


def test_readme_command_lines_parse() -> None:
    lines = command_lines(README.read_text())
    assert len(lines) >= 10, lines  # the quick starts show that many
    assert [problem for line in lines if (problem := command_problem(line))] == []


@pytest.mark.parametrize("path", [p for p in DOCS if p != README], ids=rel)
def test_docs_command_lines_parse(path: Path) -> None:
    assert [problem for line in command_lines(path.read_text()) if (problem := command_problem(line))] == []


def test_api_table_is_the_routes() -> None:
    rows = api_rows(README.read_text())
    assert rows, "the README's API table is empty"
    assert table_problems(rows, coordinator_routes()) == []


def test_api_doc_paths_are_routes() -> None:
    """The endpoint table of docs/api.md names only routes that exist."""
    paths = {path for _, path in coordinator_routes()}
    missing = []
    for line in section((ROOT / "docs" / "api.md").read_text(), "Endpoints").splitlines():
        if not line.startswith("| `"):
            continue
        for item in CODE.findall(line.split("|")[1]):
            path = item.split()[-1]
            if path.startswith("/") and "..." not in path and path not in paths:
                missing.append(path)
    assert missing == []


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[Pool]:
    """The README's pool, in-process: one host with a fake llama-server serving smollm2-135m."""
    async with AsyncExitStack() as stack:
        backend = await stack.enter_async_context(inproc.fake("llamacpp", model="smollm2-135m:latest"))
        coordinator = await stack.enter_async_context(inproc.coordinator(tmp_path))
        await stack.enter_async_context(inproc.agent(coordinator, "llamacpp", backend, "readme-host"))
        await coordinator.models({"smollm2-135m:latest": 1})
        yield coordinator


async def run(*argv: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})}, cwd=ROOT)
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_readme_curl_answers(pool: Pool) -> None:
    curls = blocks_of(README.read_text(), "bash", "curl ")
    assert curls, "the README shows no curl example"
    for example in curls:
        assert EXAMPLE_URL in example
        line = example.replace(EXAMPLE_URL, pool.url) + " --silent --show-error --write-out '\\n%{http_code}'"
        code, out, err = await run("bash", "-c", line, env={"ANDY_KEY": pool.key})
        assert code == 0, err
        body, _, status = out.rpartition("\n")
        assert status == "200", out
        answer = json.loads(body)
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"]["content"] == "pool heard: Hello"


async def test_readme_python_answers(pool: Pool) -> None:
    examples = blocks_of(README.read_text(), "python")
    assert examples, "the README shows no Python example"
    for example in examples:
        assert EXAMPLE_URL in example
        code, out, err = await run(sys.executable, "-", stdin=example.replace(EXAMPLE_URL, pool.url).encode())
        assert code == 0, err
        assert out.strip() == "pool heard: Hello"


async def test_readme_mindcraft_urls(pool: Pool) -> None:
    """The base URLs the README gives Mindcraft's classes answer as it says."""
    text = README.read_text()
    assert "`<pool>/api/v1` with model `auto`" in text and '`"url": "<pool>/v1"`' in text and "`/api/chat`" in text
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Hello"}]
    async with pool.http() as client:  # keyless, as those classes call it
        andy = await client.post("/api/v1/chat/completions", json={"model": "auto", "messages": messages})
        assert andy.status_code == 200, andy.text
        assert andy.json()["choices"][0]["message"]["content"] == "pool heard: Hello"
        assert andy.json()["model"] == "smollm2-135m:latest"
        gpt = await client.post("/v1/responses", json={"model": "smollm2-135m", "instructions": "Be brief.",
                                                       "input": messages})
        assert gpt.status_code == 200, gpt.text
        assert gpt.json()["output"][0]["content"][0]["text"] == "pool heard: Hello"
        ollama = await client.post("/api/chat", json={"model": "smollm2-135m", "messages": messages, "stream": False})
        assert ollama.status_code == 200, ollama.text
        assert ollama.json()["message"]["content"] == "pool heard: Hello"


# --- the checks can fail ----------------------------------------------------------------


def test_the_checks_catch_breakage(tmp_path: Path) -> None:
    """Each checker reports a broken input (so a passing run means something)."""
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n")
    broken = ("[gone](missing.md) [bad anchor](other.md#no-such) [ok](other.md#a-section) [self](#page)"
              " [not here](#nowhere)\n# Page\n")
    assert [problem.rpartition(": ")[2] for problem in link_problems(page, broken)] == [
        "no file missing.md", f"no heading #no-such in {tmp_path / 'other.md'}", "no heading #nowhere here"]
    assert command_problem("andy-host join --coordinator http://x --no-such-flag") is not None
    assert command_problem("andy-host coordinator keys create --daily-limit 5") is not None  # --name is required
    assert command_problem("andy-host coordinator keys") is not None  # a group, no subcommand
    assert command_problem("andy-host coordinator hosts --json") is None
    routes = {("GET", "/a"), ("POST", "/b")}
    assert table_problems([(["/a"], {"GET"})], routes) == [
        "route POST /b is not in the README's API table (nor in OMITTED)"]
    assert table_problems([(["/a"], {"GET"}), (["/b"], {"POST"}), (["/c"], {"GET"})], routes) == [
        "row /c: no route GET /c"]
