"""The agent honours a busy coordinator's Retry-After (admission pacing), jittered."""

from __future__ import annotations

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from andy_host.agent.link import retry_after


def refused(status: int, retry: str | None) -> aiohttp.WSServerHandshakeError:
    info = aiohttp.RequestInfo(URL("http://pool/api/andy/hosts/ws"), "GET", CIMultiDictProxy(CIMultiDict()))
    headers = CIMultiDictProxy(CIMultiDict({"Retry-After": retry} if retry is not None else {}))
    return aiohttp.WSServerHandshakeError(info, (), status=status, message="busy", headers=headers)


def test_a_503_with_retry_after_sets_the_next_delay_with_jitter() -> None:
    assert retry_after(refused(503, "5"), 30, rng=lambda: 0.0) == 2.5
    assert retry_after(refused(503, "5"), 30, rng=lambda: 1.0) == 7.5
    assert retry_after(refused(429, "5"), 30, rng=lambda: 0.5) == 5.0
    assert retry_after(refused(503, "600"), 30) == 30  # never beyond reconnect_max


def test_anything_else_falls_back_to_backoff() -> None:
    for exc in (refused(503, None), refused(503, "soon"), refused(503, "-1"), refused(404, "5"),
                ConnectionRefusedError()):
        assert retry_after(exc, 30) is None


def test_a_kicked_host_waits_out_its_kick() -> None:
    from andy_host.agent.link import kicked_wait

    assert kicked_wait("closed (4005 kicked by the admin; retry in 600s)", rng=lambda: 0.0) == 600
    assert kicked_wait("closed (4005 kicked by the admin; retry in 600s)", rng=lambda: 1.0) == 660
    assert kicked_wait("closed (4005 kicked by the admin; retry in 99999999999s)") is None  # not a sane number
    for other in ("closed (1006 retry in 600s)", "closed (4005)", "closed", "ConnectionResetError: x"):
        assert kicked_wait(other) is None
