"""The dashboard: what a visitor sees in headless Chromium (axes, capacity of the hosts
able to serve, pause reasons, error rate and time to first token, the contributor
leaderboard, a hostile host name shown as text, a phone's width), and the pure parts
behind it (the one-second history, capacity, the ledger by hour)."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from andy_host.coordinator.hosts.registry import Host
from andy_host.coordinator.observe.history import TTFT_BUCKETS, History, quantile
from andy_host.coordinator.pool.capacity import serving, slots
from andy_host.coordinator.store.interface import LEDGER_HOURS_KEPT, ledger_hour
from andy_host.coordinator.store.sqlite import MIGRATIONS, SQLiteDatabase
from tests.harness.browser import Browser
from tests.harness.procs import ROOT, Proc, Processes, wait_models
from tests.harness.sse import chat_stream

MODEL = "m:latest"
ARTIFACTS = ROOT / "test-artifacts"
EVIL = "<img src=x onerror=\"document.title='pwned'\"><b>evil</b>"
NVML = {"ANDY_HOST_TEST_NVML": str(ROOT / "tests" / "harness" / "fixtures" / "gpus" / "no-driver.json"),
        "PYTHONPATH": str(ROOT / "tests" / "harness" / "fakes" / "nvml"), "ANDY_HOST_CONTROLS_CHECK_INTERVAL": "0.2"}

# What the page shows, read by the browser from the rendered DOM.
READ_PAGE = """(() => {
  // on screen: laid out, and inside the viewport and every scrolling box around it
  const inView = (node) => {
    const r = node.getBoundingClientRect();
    if (!r.width || !r.height || r.left < 0 || r.right > window.innerWidth) return false;
    for (let box = node.parentElement; box; box = box.parentElement) {
      const b = box.getBoundingClientRect();
      if (getComputedStyle(box).overflowX !== "visible" && (r.left < b.left || r.right > b.right)) return false;
    }
    return true;
  };
  const text = (sel) => [...document.querySelectorAll(sel)].map((e) => e.textContent);
  const hosts = {};
  for (const row of document.querySelectorAll("#hosts tr[data-host]")) {
    const reason = row.querySelector("[data-reason]");
    hosts[row.dataset.host] = {name: row.cells[0].textContent, status: row.querySelector("[data-status]").dataset.status,
      reason: reason ? reason.textContent : null, reasonShown: reason ? inView(reason) : false};
  }
  const boards = {};
  for (const board of document.querySelectorAll("[data-board]"))
    boards[board.dataset.board] = [...board.querySelectorAll("tr[data-leader]")].map(
      (r) => [r.cells[1].textContent, Number(r.querySelector("[data-tokens]").dataset.tokens)]);
  const totals = {};
  for (const card of document.querySelectorAll("[data-total]")) totals[card.dataset.total] = card.querySelector("b").textContent;
  const models = {};
  for (const row of document.querySelectorAll("#models tr[data-model]")) models[row.dataset.model] = [...row.cells].map((c) => c.textContent);
  return {titles: text("#chart [data-axis-title]"), left: text('#chart [data-axis="left"]'),
    right: text('#chart [data-axis="right"]'), times: text('#chart [data-axis="time"]'),
    series: [...document.querySelectorAll("#chart path")].map((p) => p.dataset.series),
    hosts, boards, totals, models, images: document.images.length, title: document.title,
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth};
})()"""


def test_history_rates_error_rate_and_time_to_first_token() -> None:
    history = History()
    start = history.points[0].t
    for second in range(1, 11):
        for _ in range(4):
            history.request("chat", 200)
            history.ttft(0.2 if second % 2 else 0.6)
        history.request("chat", 502)
        history.request("models", 500)  # not work: a model list is not a request the pool serves
        history.request("chat", 404)  # the client's mistake, not the pool's
        history.tokens(100)
        history.sample(start + second)
    rates = history.rates(5)
    assert len(rates) == 5 and rates[-1] == {"t": round(start + 10, 1), "requests_per_s": 6.0,
                                             "errors_per_s": 1.0, "tokens_per_s": 100.0}
    summary = history.summary(300)
    assert summary["requests"] == 60 and summary["errors"] == 10 and summary["error_rate"] == round(10 / 60, 4)
    assert summary["ttft_count"] == 40 and summary["ttft_mean"] == 0.4
    assert 0.1 < summary["ttft_p50"] <= 0.25 and 0.5 < summary["ttft_p95"] <= 0.75  # within their buckets
    assert history.summary(4.5)["requests"] == 24  # only the last window's points
    assert quantile(0.5, [0] * (len(TTFT_BUCKETS) + 1)) is None
    assert quantile(0.99, [0] * len(TTFT_BUCKETS) + [3]) == TTFT_BUCKETS[-1]  # above every bound


def _host(name: str, capacity: int = 2, **state: Any) -> Host:
    async def nothing(*_: Any) -> None:
        return None

    host = Host(id=name, name=name, backend="ollama", capacity=capacity, send=nothing, close=nothing, conn=0)
    for key, value in state.items():
        setattr(host, key, value)
    return host


def test_capacity_counts_only_hosts_able_to_serve() -> None:
    now = time.monotonic()
    hosts = [_host("ok", 4), _host("busy", 2), _host("paused", 8, status="paused", pause=["vram_low"]),
             _host("draining", 8, status="draining"), _host("down", 8, status="backend_down"),
             _host("quarantined", 8), _host("ejected", 8)]
    hosts[1].jobs = {"a": None, "b": None}  # type: ignore[dict-item]  # its slots are taken, not gone
    hosts[5].trust.quarantined = "failed checks"
    hosts[6].health.ejected_until = now + 30
    assert [h.name for h in hosts if serving(h, now)] == ["ok", "busy"]
    assert slots(hosts, now) == 6
    assert slots(hosts, now + 60) == 14  # the ejection is over


def _old_database(path: Path) -> None:
    """A database file as the coordinator wrote it before the ledger had hours."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version, statements in enumerate(MIGRATIONS[:5], start=1):
        for statement in statements:
            db.execute(statement)
        db.execute("INSERT INTO schema_version VALUES (?)", (version,))
    db.execute("INSERT INTO host_ledger (host_id, name, requests, tokens) VALUES ('h-old', 'veteran', 50, 9000)")
    db.close()


def test_the_ledger_by_hour_migrates_old_files_and_ranks_each_period(tmp_path: Path) -> None:
    _old_database(tmp_path / "pool.db")
    db = SQLiteDatabase(str(tmp_path / "pool.db"))
    assert db.schema_version() >= 6
    assert db.leaderboard(None, 10) == [{"name": "veteran", "tokens": 9000, "requests": 50}]  # history kept
    assert db.leaderboard(time.time() - 86400, 10) == []  # it has no time: not credited to today
    db.add_ledger([("h1", "alpha", None, 3, 300, 0, 1.0), ("h2", "beta", None, 1, 100, 1, 1.0),
                   ("h3", "idle", None, 0, 0, 2, 1.0), ("h4", "beta", None, 2, 50, 0, 1.0)])
    now = time.time()
    hour = ledger_hour(now)
    db.db.execute("INSERT INTO host_ledger_hours VALUES (?, 'h5', 'last-week', 9, 5000)", (hour - 3 * 86400,))
    db.db.execute("INSERT INTO host_ledger_hours VALUES (?, 'h6', 'ancient', 9, 7000)",
                  (hour - (LEDGER_HOURS_KEPT + 1) * 3600,))
    day = db.leaderboard(now - 86400, 10)
    assert day == [{"name": "alpha", "tokens": 300, "requests": 3}, {"name": "beta", "tokens": 150, "requests": 3}]
    assert [r["name"] for r in db.leaderboard(now - 7 * 86400, 10)] == ["last-week", "alpha", "beta"]
    assert [r["name"] for r in db.leaderboard(now - 7 * 86400, 2)] == ["last-week", "alpha"]  # the top N only
    assert "ancient" in [r["name"] for r in db.leaderboard(now - 30 * 86400, 10)]
    db.add_ledger([("h1", "alpha", None, 1, 10, 0, 1.0)])  # each write drops rows older than kept
    assert "ancient" not in [r["name"] for r in db.leaderboard(now - 30 * 86400, 10)]
    assert [r["name"] for r in db.leaderboard(None, 10)] == ["veteran", "alpha", "beta"]
    db.db.execute("INSERT INTO host_identities (host_id, created, banned) VALUES ('h1', 0, 1)")
    assert [r["name"] for r in db.leaderboard(now - 86400, 10)] == ["beta"]  # a banned host is no contributor
    db.close()


def _pool(procs: Processes) -> tuple[Proc, str]:
    backend = procs.fake("ollama", "--models", MODEL, "--token-delay", "0.05")
    owl_backend = procs.fake("ollama", "--models", f"{MODEL},owl:latest")
    coordinator = procs.coordinator(env={"ANDY_HOST_COORDINATOR_ANON_PER_MINUTE": "1000",
                                         "ANDY_HOST_COORDINATOR_FLUSH_INTERVAL": "0.2",
                                         "ANDY_HOST_COORDINATOR_LEADERBOARD_REFRESH": "0.2"})
    procs.agent(coordinator.url, "ollama", backend.url, "gpu-box-1", env=NVML)
    procs.agent(coordinator.url, "ollama", backend.url, "gpu-box-2", "--max-concurrency", "4", env=NVML)
    procs.agent(coordinator.url, "ollama", backend.url, EVIL, env=NVML)
    now = dt.datetime.now()
    outside = f"{(now + dt.timedelta(hours=2)):%H:%M}-{(now + dt.timedelta(hours=3)):%H:%M}"
    procs.agent(coordinator.url, "ollama", owl_backend.url, "night-owl", "--active-hours", outside, env=NVML)
    wait_models(coordinator.url, {MODEL: 4, "owl:latest": 1})
    return coordinator, coordinator.key


def _serve_some(base: str) -> None:
    with ThreadPoolExecutor(8) as ex:  # as many as the serving slots: every serving host gets some
        outcomes = list(ex.map(lambda i: chat_stream(base, MODEL, f"hello {i} " + "w " * 8).outcome, range(8)))
    assert outcomes == ["complete"] * 8
    assert chat_stream(base, "owl:latest", "only the paused host has me").status == 503  # the pool failed it


def _wait_leaderboard(base: str, key: str) -> dict[str, int]:
    """Tokens per host name as pool_status measured them, once the dashboard ranks the same."""
    deadline = time.monotonic() + 15
    while True:
        status = httpx.get(base + "/api/andy/pool_status", headers={"Authorization": f"Bearer {key}"}).json()
        measured = {h["name"]: h["tokens"] for h in status["hosts"] if h["tokens"]}
        board = httpx.get(base + "/api/andy/dashboard").json()["leaderboard"]
        if all({r["name"]: r["tokens"] for r in board[period]} == measured for period in ("day", "week", "all")):
            return measured
        if time.monotonic() > deadline:
            raise AssertionError(f"leaderboard {board} never matched {measured}")
        time.sleep(0.2)


def _wait_quality(base: str, requests: int) -> None:
    """Until the once-a-second history has sampled all ``requests`` (a loaded machine
    may read the page between the last request and the next sample)."""
    deadline = time.monotonic() + 10
    while httpx.get(base + "/api/andy/dashboard").json()["quality"]["requests"] < requests:
        if time.monotonic() > deadline:
            raise AssertionError("the history never counted every request")
        time.sleep(0.2)


def test_dashboard_in_headless_chromium(procs: Processes) -> None:
    coordinator, key = _pool(procs)
    status = httpx.get(coordinator.url + "/api/andy/pool_status", headers={"Authorization": f"Bearer {key}"}).json()
    owl = next(h for h in status["hosts"] if h["name"] == "night-owl")
    assert owl["status"] == "paused" and not owl["serving"]
    assert status["capacity"] == 8 and status["active_hosts"] == 3  # 2 + 4 + 2: the paused host's 2 left out
    assert {m["name"]: m["capacity"] for m in status["models"]} == {MODEL: 8, "owl:latest": 0}
    _serve_some(coordinator.url)
    measured = _wait_leaderboard(coordinator.url, key)
    assert len(measured) >= 2
    _wait_quality(coordinator.url, requests=9)
    ARTIFACTS.mkdir(exist_ok=True)

    async def look() -> tuple[dict[str, Any], dict[str, Any]]:
        async with Browser(ARTIFACTS / "chromium-cdp") as browser:
            ready = "document.body.dataset.loaded === '1' && document.querySelectorAll('[data-leader]').length > 0"
            await browser.open(coordinator.url + "/", 1280, ready=ready)
            wide = await browser.evaluate(READ_PAGE)
            await browser.screenshot(ARTIFACTS / "dashboard.png")
            await browser.open(coordinator.url + "/", 400, 860, ready=ready)
            await asyncio.sleep(0.3)  # let the chart lay out at the new width
            phone = await browser.evaluate(READ_PAGE)
            await browser.screenshot(ARTIFACTS / "dashboard-phone.png")
            return wide, phone

    wide, phone = asyncio.run(look())
    rates = httpx.get(coordinator.url + "/api/andy/dashboard").json()["rates"]
    _check_page(wide, measured, max(r["tokens_per_s"] for r in rates))
    _check_page(phone, measured, max(r["tokens_per_s"] for r in rates))
    assert phone["innerWidth"] == 400 and phone["scrollWidth"] <= 400  # the page fits a phone; tables scroll inside
    assert wide["scrollWidth"] <= 1280


def _check_page(page: dict[str, Any], measured: dict[str, int], max_tokens_per_s: float) -> None:
    # the chart: both axes titled with units, a time axis, numbered ticks from 0 up to a
    # round maximum at or above the highest point drawn on that axis
    assert page["titles"] == ["tokens/s", "requests/s", "time (your clock)"]
    left = [float(v.replace("k", "e3")) for v in page["left"]]
    assert left[-1] == 0 and left == sorted(left, reverse=True) and left[0] >= max_tokens_per_s > 0
    assert float(page["right"][-1]) == 0 and len(page["right"]) == 5 and len(page["times"]) >= 3
    assert page["series"] == ["tokens_per_s", "requests_per_s", "errors_per_s"]
    # capacity: the paused host's slots are not counted; its reason is on the page, not in a tooltip
    assert page["totals"]["hosts"] == "3/4" and page["totals"]["capacity"] == "8"
    assert page["models"][MODEL] == [MODEL, "4", "8", "0"] and page["models"]["owl:latest"][2] == "0"
    owl = page["hosts"]["night-owl"]
    assert owl["status"] == "paused" and owl["reason"] == "outside its owner's hours" and owl["reasonShown"]
    # 1 of 9 work requests failed (the 503); time to first token measured
    assert page["totals"]["error_rate"] == "11%"
    assert page["totals"]["ttft_p50"].endswith(("ms", " s")) and page["totals"]["ttft_p95"] != "–"
    # the leaderboard: every host that served, with the tokens the coordinator measured
    for period in ("day", "week", "all"):
        assert dict(page["boards"][period]) == measured
        assert [t for _, t in page["boards"][period]] == sorted(measured.values(), reverse=True)
    # a hostile name is text: shown as written, nothing of it run or parsed
    assert page["hosts"][EVIL]["name"] == EVIL and page["images"] == 0 and page["title"] == "andy-host pool"


@pytest.mark.parametrize("size", [0, -1, 101])
def test_leaderboard_size_is_bounded(size: int) -> None:
    from andy_host.config import load_config
    from andy_host.errors import ConfigError

    with pytest.raises(ConfigError, match="leaderboard_size"):
        load_config(env={"ANDY_HOST_COORDINATOR_LEADERBOARD_SIZE": str(size)})
