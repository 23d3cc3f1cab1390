"""The models this host shares: discovered from the backend, refreshed periodically."""

from __future__ import annotations

import structlog

from andy_host.agent.backends.base import Backend
from andy_host.agent.controls import shared
from andy_host.config import ControlsConfig
from andy_host.errors import BackendError
from andy_host.protocol import ModelInfo

log = structlog.get_logger("andy_host.catalog")


class Catalog:
    def __init__(self, backend: Backend, controls: ControlsConfig | None = None) -> None:
        self.backend = backend
        self.controls = controls or ControlsConfig()
        self.withheld: list[str] = []  # served by the backend, not shared by the owner
        self.models: list[ModelInfo] = []
        self.backend_ids: dict[str, str] = {}
        self.reachable = False
        self.error: str | None = None

    async def refresh(self) -> bool:
        """Re-read the backend's models; True when what we advertise changed."""
        try:
            found = await self.backend.discover()
        except BackendError as exc:
            changed = self.reachable or bool(self.models)
            if self.reachable or self.error is None:
                log.warning("backend.unreachable", url=self.backend.url, error=exc.message)
            self.reachable, self.error = False, exc.message
            self.models, self.backend_ids = [], {}
            return changed
        self.withheld = sorted(d.info.name for d in found if not shared(d.info.name, self.controls))
        found = [d for d in found if shared(d.info.name, self.controls)]
        models = [d.info for d in found]
        ids = {d.info.name: d.backend_id for d in found}
        changed = models != self.models or not self.reachable
        if changed:
            log.info("backend.models", url=self.backend.url, models=sorted(ids))
        self.models, self.backend_ids = models, ids
        self.reachable, self.error = True, None
        return changed

    def backend_id(self, name: str) -> str | None:
        return self.backend_ids.get(name)

    def served_context(self, name: str) -> int | None:
        """The context the backend serves ``name`` with, as last discovered (None: not known)."""
        return next((m.served_context for m in self.models if m.name == name), None)
