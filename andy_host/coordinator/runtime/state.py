"""Typed application state keys (``web.AppKey``) shared by the coordinator's modules."""

from __future__ import annotations

from aiohttp import web

from andy_host.coordinator.pool.relay import Relay
from andy_host.coordinator.store.interface import Store

STORE = web.AppKey("store", Store)
RELAY = web.AppKey("relay", Relay)
