"""/metrics as Prometheus reads it: conventions (counters with ``_total``, no
``_created``, units and 0-1 ratios in names, ``andy_build_info``), per-host series
bounded by ``metrics_max_hosts`` with the rest under ``host="(other)"``, and the Grafana
board in docs/grafana, every query of which runs on a real Prometheus scraping a pool.

The pools run in-process (tests/harness/inproc.py); hosts read an H100 through the fake NVML
(tests/harness/fakes/nvml), so GPU series come from the real heartbeat path.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import platform
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import andy_host
from andy_host.agent import hardware
from andy_host.coordinator.hosts.registry import Host
from andy_host.coordinator.observe.hostseries import MAX_LABEL_CHARS, OTHER, HostSeries, host_label
from tests.harness.inproc import Pool, agent, coordinator, fake, until
from tests.harness.procs import ROOT

MODEL = "m:latest"
GRAFANA = ROOT / "docs" / "grafana" / "andy-host.json"
SCRAPE_EXAMPLE = ROOT / "docs" / "prometheus.yml"
PROMETHEUS = shutil.which("prometheus")
H100_USED = 1073741824  # tests/harness/fixtures/gpus/h100-80gb.json
EVIL = 'evil\t"host"\\\n' + "x" * 150  # hello names are at most 200 characters
Families = dict[str, Any]  # family name -> prometheus_client Metric


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every in-process host reads one H100 (12% busy, 1 GiB used, 34 °C)."""
    spec = importlib.util.spec_from_file_location("fake_pynvml", ROOT / "tests" / "harness" / "fakes" / "nvml" / "pynvml.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(hardware, "pynvml", module)
    monkeypatch.setenv("ANDY_HOST_TEST_NVML", str(ROOT / "tests" / "harness" / "fixtures" / "gpus" / "h100-80gb.json"))


async def scrape(pool: Pool) -> Families:
    """GET /metrics, parsed by prometheus_client's parser; no series twice."""
    async with pool.http() as http:
        response = await http.get("/metrics")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    series = [(s.name, tuple(sorted(s.labels.items()))) for f in families.values() for s in f.samples]
    assert len(series) == len(set(series)), "duplicate series"
    return families


def samples(families: Families, name: str, **labels: str) -> list[Sample]:
    return [s for f in families.values() for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def total(families: Families, name: str, **labels: str) -> float:
    return sum(s.value for s in samples(families, name, **labels))


def by_host(families: Families, name: str) -> dict[str, float]:
    return {s.labels["host"]: s.value for s in samples(families, name)}


async def traffic(pool: Pool, chats: int) -> None:
    client = pool.client()
    for i in range(chats):
        messages: Any = [{"role": "user", "content": f"question {i}"}]
        if i % 2:
            async for _ in await client.chat.completions.create(model=MODEL, messages=messages, stream=True):
                pass
        else:
            await client.chat.completions.create(model=MODEL, messages=messages)
    await client.embeddings.create(model=MODEL, input=["one two three"])


@contextlib.asynccontextmanager
async def hosts(pool: Pool, url: str, names: list[str]) -> AsyncIterator[None]:
    """Hosts with these names (one state directory each, so duplicates are two hosts)."""
    async with contextlib.AsyncExitStack() as stack:
        for i, name in enumerate(names):
            await stack.enter_async_context(agent(pool, "ollama", url, name, state_dir=str(pool.tmp / f"s{i}")))
        await pool.models({MODEL: len(names)})
        await until(lambda: all(h.hardware.gpus for h in pool.registry.hosts.values()), 5, "GPU readings")
        yield


async def test_metrics_follow_prometheus_conventions(tmp_path: Path, fake_gpus: None) -> None:
    names = ["alpha", "beta", EVIL, "gamma", "alpha"]  # cap 3: alpha (two hosts), beta, EVIL; gamma aggregated
    async with coordinator(tmp_path, metrics_max_hosts=3) as pool, fake("ollama") as url, hosts(pool, url, names):
        before = await scrape(pool)
        await traffic(pool, 6)
        after = await scrape(pool)

    for families in (before, after):
        assert not [s.name for f in families.values() for s in f.samples if s.name.endswith("_created")]
    types = {name: f.type for name, f in after.items()}
    for name in ("andy_requests", "andy_completion_tokens", "andy_prompt_tokens", "andy_rate_limited",
                 "andy_failovers", "andy_rescued", "andy_continued", "andy_ejections", "andy_jobs_completed",
                 "andy_host_jobs_served", "andy_host_completion_tokens"):
        assert types.get(name) == "counter", name
        assert {s.name for s in after[name].samples} <= {name + "_total"}, name
    assert types["andy_request_duration_seconds"] == types["andy_time_to_first_token_seconds"] == "histogram"
    for name in ("andy_hosts", "andy_queue_depth", "andy_jobs_in_flight", "andy_host_jobs_in_flight",
                 "andy_build_info", "andy_host_gpu_utilization_ratio", "andy_host_gpu_memory_used_bytes",
                 "andy_host_gpu_memory_total_bytes", "andy_host_gpu_temperature_celsius", "andy_host_gpu_power_watts"):
        assert types.get(name) == "gauge", name
    assert not [name for name in types if "percent" in name]

    (build,) = samples(after, "andy_build_info")
    assert build.value == 1 and build.labels == {"version": andy_host.__version__, "python": platform.python_version()}

    # the series cap: three names of their own, the fourth under (other), a duplicated name once
    evil = host_label(EVIL)
    assert evil == 'evil "host"\\ ' + "x" * (MAX_LABEL_CHARS - 13) and len(evil) == MAX_LABEL_CHARS
    for name in ("andy_host_jobs_served_total", "andy_host_completion_tokens_total", "andy_host_jobs_in_flight"):
        assert set(by_host(after, name)) == {"alpha", "beta", evil, OTHER}, name
    assert total(after, "andy_hosts_aggregated") == 1
    gpu = {s.labels["host"]: s.value for s in samples(after, "andy_host_gpu_memory_used_bytes", gpu="0")}
    assert gpu == {"alpha": 2 * H100_USED, "beta": H100_USED, evil: H100_USED, OTHER: H100_USED}
    assert {s.value for s in samples(after, "andy_host_gpu_utilization_ratio")} == {0.12}
    assert {s.value for s in samples(after, "andy_host_gpu_temperature_celsius")} == {34}

    # counters count the traffic, and the per-host series add up to the pool's totals
    assert total(after, "andy_requests_total") - total(before, "andy_requests_total") == 7
    assert total(after, "andy_requests_total", endpoint="chat", model=MODEL, status="200") == 6
    assert total(after, "andy_time_to_first_token_seconds_count", model=MODEL) == 6
    assert total(after, "andy_request_duration_seconds_count", endpoint="embeddings") == 1
    assert total(before, "andy_host_jobs_served_total") == 0
    assert total(after, "andy_host_jobs_served_total") == total(after, "andy_jobs_completed_total") == 7
    completion = total(after, "andy_completion_tokens_total", model=MODEL)
    assert completion > total(before, "andy_completion_tokens_total") and completion >= 6
    assert total(after, "andy_host_completion_tokens_total") == completion
    assert total(after, "andy_prompt_tokens_total", model=MODEL) == 6 * 9 + 3  # 9 a chat, a word an input
    assert total(after, "andy_queue_depth", model=MODEL) == 0


def fake_host(name: str, conn: int) -> Host:
    async def nothing(*_: Any) -> None:
        return None

    return Host(id=f"h{conn}", name=name, backend="ollama", capacity=1, send=nothing, close=nothing, conn=conn)


def test_host_series_keep_counters_monotonic_within_the_cap() -> None:
    series = HostSeries(cap=2)
    a, b, c = fake_host("a", 1), fake_host("b", 2), fake_host("c", 3)
    a.served, b.served, c.served = 1, 2, 3
    assert {k: len(v) for k, v in series.refresh([c, b, a], now=1).items()} == {"a": 1, "b": 1, OTHER: 1}
    a.served, c.served = 5, 4
    series.left(a)  # what a did since the scrape is counted before it goes
    assert series.named["a"].jobs == 5 and series.other.jobs == 3
    shown = series.refresh([b, c], now=2)  # a is gone: c takes its place, (other) keeps what it had
    assert set(shown) == {"b", "c"} and "a" not in series.named
    assert series.named["c"].jobs == 1 and series.other.jobs == 3
    c.served = 6
    series.refresh([b, c], now=3)
    assert series.named["c"].jobs == 3 and series.named["b"].jobs == 2
    assert HostSeries(cap=0).refresh([a], now=1).keys() == {OTHER}


@pytest.mark.parametrize(("name", "label"), [
    ("my-4090", "my-4090"), ("  two\n lines\x00 ", "two lines"), ("", "(unnamed)"), ("\x1b[31m", "[31m"),
    (OTHER, OTHER + "_"), ("(unnamed)", "(unnamed)_"), ("显卡 一号", "显卡 一号"),
])
def test_host_labels_are_bounded_printable_and_never_reserved(name: str, label: str) -> None:
    assert host_label(name) == label


def grafana_queries() -> list[str]:
    board = json.loads(GRAFANA.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", ())]
    assert len(exprs) >= 20 and all(t.get("datasource") for p in board["panels"] for t in p["targets"])
    return exprs


def queried_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (every name of ours starts with andy_)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    return set(re.findall(r"\bandy_[a-zA-Z0-9_]*", without_strings))


def exposed(families: Families, name: str) -> bool:
    """``name`` is a series /metrics exposes: a gauge, a counter's ``_total``, a histogram's
    ``_bucket``/``_sum``/``_count``."""
    for suffix, kind in (("_total", "counter"), ("_bucket", "histogram"), ("_sum", "histogram"),
                         ("_count", "histogram")):
        if name.endswith(suffix) and name.removesuffix(suffix) in families:
            return bool(families[name.removesuffix(suffix)].type == kind)
    return name in families and families[name].type in ("gauge", "untyped")


async def test_every_metric_the_grafana_board_queries_is_in_metrics(tmp_path: Path, fake_gpus: None) -> None:
    async with coordinator(tmp_path) as pool, fake("ollama") as url, hosts(pool, url, ["alpha"]):
        await traffic(pool, 2)
        families = await scrape(pool)
    names = set().union(*(queried_names(e) for e in grafana_queries()))
    assert len(names) >= 20
    assert sorted(n for n in names if not exposed(families, n)) == []
    assert not exposed(families, "andy_requests") and not exposed(families, "andy_hosts_total")  # the check can fail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def prometheus(tmp: Path, target: str) -> Iterator[str]:
    """A real Prometheus scraping ``target`` every 250 ms with docs/prometheus.yml."""
    assert PROMETHEUS is not None
    config = SCRAPE_EXAMPLE.read_text().replace("127.0.0.1:8080", target).replace("15s", "250ms")
    (tmp / "prometheus.yml").write_text(config)
    port = free_port()
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], stdout=log, stderr=log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def query(http: httpx.AsyncClient, base: str, expr: str) -> list[Any]:
    reply = (await http.get(base + "/api/v1/query", params={"query": expr})).json()
    assert reply["status"] == "success", (expr, reply)
    result: list[Any] = reply["data"]["result"]
    return result


async def eventually(check: Callable[[], Any], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"{what} did not happen within {within}s"
        await asyncio.sleep(0.2)


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is needed (scripts/setup installs it as root: "
                                               "apt-get install prometheus)")
async def test_grafana_board_queries_answer_on_a_real_prometheus(tmp_path: Path, fake_gpus: None) -> None:
    async with (coordinator(tmp_path, anon_per_minute=1) as pool, fake("ollama") as url,
                hosts(pool, url, ["alpha", "beta"]), httpx.AsyncClient(timeout=10) as http):
        for _ in range(2):  # the second anonymous chat in a minute: a 429
            await http.post(pool.url + "/v1/chat/completions",
                            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        with prometheus(tmp_path, pool.url.removeprefix("http://")) as base:
            async def scraped() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return bool(await query(http, base, 'sum_over_time(up{job="andy-host"}[1m]) >= 3'))
                return False

            async def busy() -> bool:  # traffic while Prometheus scrapes, so every rate() has points
                await traffic(pool, 2)
                return await scraped()

            await eventually(busy, 30, "three scrapes of the coordinator")
            await traffic(pool, 2)
            # until Prometheus (scraping every 250 ms) has that traffic: each query answers,
            # or the bound for a loaded machine passes and those still empty are the failure
            deadline = time.monotonic() + 30
            while True:
                empty = [e for e in grafana_queries()
                         if not await query(http, base, e.replace("$__rate_interval", "1m"))]
                if not empty or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
    assert empty == []
