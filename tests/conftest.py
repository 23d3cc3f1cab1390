from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.procs import Processes
from tests.harness.servers import postgres_server, postgres_url, redis_server, redis_url  # noqa: F401  (fixtures)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    manager = Processes(tmp_path)
    yield manager
    manager.stop_all()


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    manager = Processes(tmp_path_factory.mktemp("pool"))
    yield manager
    manager.stop_all()
