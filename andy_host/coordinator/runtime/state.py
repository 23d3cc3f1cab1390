"""Typed application state keys (``web.AppKey``) shared by the coordinator's modules."""

from __future__ import annotations

from aiohttp import web

from andy_host.config import CoordinatorConfig
from andy_host.coordinator.access.auth import Access
from andy_host.coordinator.access.ratelimit import SlidingWindow
from andy_host.coordinator.admin.moderation import Moderation
from andy_host.coordinator.hosts.admission import Gate
from andy_host.coordinator.hosts.enrolment import Kicks
from andy_host.coordinator.hosts.registry import Registry
from andy_host.coordinator.observe.metrics import Metrics
from andy_host.coordinator.observe.stats import PoolStats
from andy_host.coordinator.pool.relay import Relay
from andy_host.coordinator.pool.scheduler import Scheduler
from andy_host.coordinator.runtime.periodic import Periodic
from andy_host.coordinator.store.interface import Store
from andy_host.coordinator.trust.checks import Checker
from andy_host.coordinator.trust.ledger import Ledger

CONFIG = web.AppKey("config", CoordinatorConfig)
REGISTRY = web.AppKey("registry", Registry)
STORE = web.AppKey("store", Store)
SCHEDULER = web.AppKey("scheduler", Scheduler)
RELAY = web.AppKey("relay", Relay)
STATS = web.AppKey("stats", PoolStats)
ACCESS = web.AppKey("access", Access)
LEDGER = web.AppKey("ledger", Ledger)
METRICS = web.AppKey("metrics", Metrics)
GATE = web.AppKey("gate", Gate)
KICKS = web.AppKey("kicks", Kicks)
PERIODIC = web.AppKey("periodic", Periodic)
CHECKER = web.AppKey("checker", Checker)
MODERATION = web.AppKey("moderation", Moderation)
NEW_HOSTS = web.AppKey("new_hosts", SlidingWindow)  # new host identities per address group per hour
