"""What strangers can make the coordinator's observability hold and send: model names are
label values (hosts choose them), so /metrics gives at most ``metrics_max_models`` of
them series of their own, the rest under ``model="(other)"``; the public dashboard feed
lists at most ``dashboard_max_rows`` hosts and models and is built at most once every
``dashboard_cache_seconds``, whatever the pool's size and the number of viewers.

Hosts are raw websocket clients (tests/harness/evil.py), /metrics is read with
prometheus_client's parser (tests/test_metrics.py's ``scrape``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from andy_host.coordinator.observe.hostseries import OTHER, HostSeries, ModelLabels
from andy_host.coordinator.observe.metrics import METRICS
from andy_host.coordinator.observe.prometheus import SCRAPE
from tests.harness.evil import RawHost, hello, join
from tests.harness.inproc import Pool, coordinator, until
from tests.test_metrics import fake_host, samples, scrape, total

EVIL_MODEL = 'evil"\\\nname:latest'  # a quote, a backslash and a newline in a label value


@contextlib.asynccontextmanager
async def raw_hosts(pool: Pool, models_each: list[list[str]]) -> AsyncIterator[list[RawHost]]:
    """Raw hosts serving these models, each answering every job with one word."""
    hosts = [await join(pool.url, hello(name=f"raw-{i}", models=[{"name": m, "loaded": True} for m in models]))
             for i, models in enumerate(models_each)]
    tasks = [asyncio.create_task(h.serve(lambda h, job: h.done(job["id"], "word", completion_tokens=1)))
             for h in hosts]
    try:
        yield hosts
    finally:
        for host in hosts:
            await host.ws.close()
        for task in tasks:
            task.cancel()


async def test_model_labels_are_bounded_whatever_hosts_advertise(tmp_path: Path) -> None:
    junk = [f"junk-{i}:latest" for i in range(60)] + [EVIL_MODEL]
    async with coordinator(tmp_path, metrics_max_models=3) as pool, \
            raw_hosts(pool, [["m:latest"], ["m:latest"], junk]):
        await until(lambda: len(pool.registry.by_model) == 62, 5, "every model indexed")
        families = await scrape(pool)  # served by two hosts, m:latest takes a place first
        client = pool.client()
        for model in ("m:latest", "junk-7", "junk-8", "junk-9", EVIL_MODEL):
            await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        after = await scrape(pool)

    queue = {s.labels["model"] for s in samples(families, "andy_queue_depth")}
    assert "m:latest" in queue and OTHER in queue and len(queue) == 4, queue  # was 62 series
    labels = {s.labels["model"] for f in after.values() for s in f.samples if "model" in s.labels}
    assert OTHER in labels and len(labels) <= 4, labels
    # nothing is lost: the sums over model are the pool's totals
    assert total(after, "andy_requests_total", endpoint="chat", status="200") == 5
    assert total(after, "andy_requests_total", model="m:latest") == 1
    assert total(after, "andy_completion_tokens_total") == 5
    assert total(after, "andy_time_to_first_token_seconds_count") == 5


def test_model_labels_keep_their_places_and_reserve_other() -> None:
    labels = ModelLabels(cap=2)
    assert [labels.label(m) for m in ("a", OTHER, "b", "a", "")] == ["a", OTHER + "_", OTHER, "a", ""]
    assert ModelLabels(cap=0).label("a") == OTHER


def test_host_series_free_every_idle_place_in_one_scrape() -> None:
    series = HostSeries(cap=3)
    old = [fake_host(name, conn) for conn, name in enumerate(("a", "b", "c"), 1)]
    series.refresh(old[:1], now=1)
    series.refresh(old, now=2)
    new = [fake_host(name, conn) for conn, name in enumerate(("d", "e", "f", "g"), 4)]
    shown = series.refresh([old[1], *new], now=3)  # b stays; a (unseen longest), then c, give their places
    assert set(series.named) == {"b", "d", "e"} and set(shown) == {"b", "d", "e", OTHER}
    assert [h.name for h in shown[OTHER]] == ["f", "g"]


async def feed(pool: Pool) -> dict[str, Any]:
    async with pool.http() as http:
        response = await http.get("/api/andy/dashboard")
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


async def test_dashboard_feed_is_bounded_and_shared(tmp_path: Path) -> None:
    models = [[f"m{i}:latest", "shared:latest"] for i in range(6)]
    async with coordinator(tmp_path, dashboard_max_rows=3, dashboard_cache_seconds=30) as pool, \
            raw_hosts(pool, models):
        await pool.models({"shared:latest": 6})
        await pool.client().chat.completions.create(model="m4", messages=[{"role": "user", "content": "hi"}])
        first = await feed(pool)
        second = await feed(pool)
        async with raw_hosts(pool, [["late:latest"]]):
            await pool.models({"late:latest": 1})
            third = await feed(pool)

    assert first["totals"]["hosts"] == 6 and first["totals"]["models"] == 7
    names = [h["name"] for h in first["hosts"]]
    assert len(names) == 3 and "raw-4" in names and names == sorted(names)  # the one that served, first
    assert "shared:latest" in [m["name"] for m in first["models"]] and len(first["models"]) == 3
    assert second == first and third == first  # one build for every viewer within the window


async def test_metrics_are_rendered_once_per_cache_period_for_every_scraper(tmp_path: Path) -> None:
    """A hammered /metrics costs one render per metrics_cache_seconds, not one per request."""
    # a period far longer than 30 scrapes take on any machine; its end is then made to come
    # by dating the last render one period back (FeedCache reads no clock of ours)
    async with coordinator(tmp_path, metrics_cache_seconds=30) as pool, pool.http() as http:
        renders = 0
        metrics = pool.app[METRICS]
        real = metrics.render

        def counted() -> bytes:
            nonlocal renders
            renders += 1
            return real()

        metrics.render = counted  # type: ignore[method-assign]
        bodies = [(await http.get("/metrics")).text for _ in range(30)]
        assert renders == 1 and len(set(bodies)) == 1
        await http.get("/api/andy/v1/models", headers={"Authorization": f"Bearer {pool.key}"})  # traffic
        assert (await http.get("/metrics")).text == bodies[0] and renders == 1  # the same period
        pool.app[SCRAPE].built_at -= 30  # that period is over
        fresh = (await http.get("/metrics")).text
        assert renders == 2 and fresh != bodies[0]  # the next period shows it
