"""The coordinator's configuration as its application holds it: one typed key."""

from __future__ import annotations

from aiohttp import web

from andy_host.config import CoordinatorConfig

CONFIG = web.AppKey("config", CoordinatorConfig)
