"""Why the host could not reach its coordinator, in words a person can act on.

:func:`describe` names a failed connect (refused, a name that does not resolve, no
answer, TLS trouble, an HTTP answer that is not a websocket...) instead of passing on
aiohttp's text; :func:`checklist` says what to check for that kind of failure, ending
with the coordinator's ``/health`` URL to try by hand. The link logs the checklist on
the first failure after each connection (see ``link.py``). Plain functions, no I/O.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from andy_host.errors import ProtocolError
from andy_host.protocol import HOSTS_WS_PATH


@dataclass(frozen=True, slots=True)
class Failure:
    kind: str  # refused | dns | unreachable | timeout | certificate | tls | disconnected | http | protocol | other
    reason: str  # one line, for logs and ``andy-host status``


def _connector(exc: aiohttp.ClientConnectorError) -> Failure:
    where = f"{exc.host}:{exc.port}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        detail = getattr(exc.certificate_error, "verify_message", "") or "not verified"
        return Failure("certificate", f"the TLS certificate of {where} is not trusted here ({detail})")
    if isinstance(exc, aiohttp.ClientSSLError) or isinstance(exc.os_error, ssl.SSLError):
        return Failure("tls", f"the TLS handshake with {where} failed (does it serve plain http?)")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return Failure("dns", f"the name {exc.host!r} does not resolve")
    if isinstance(exc.os_error, ConnectionRefusedError):
        return Failure("refused", f"nothing listens at {where} (connection refused)")
    return Failure("unreachable", f"cannot reach {where}: {exc.os_error.strerror or exc.os_error}")


def describe(exc: BaseException, timeout: float) -> Failure:
    """What went wrong with one connect, from the exception that ended it."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _connector(exc)
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return Failure("http", f"HTTP {exc.status} instead of a websocket at {HOSTS_WS_PATH}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Failure("disconnected", "the server closed the connection without answering")
    if isinstance(exc, TimeoutError):
        return Failure("timeout", f"no answer within {timeout:g}s (agent.connect_timeout)")
    if isinstance(exc, ProtocolError):
        return Failure("protocol", f"the answer is not an andy-host coordinator's: {exc}")
    return Failure("other", f"{type(exc).__name__}: {exc}")


def health_url(coordinator: str) -> str:
    """The ``/health`` URL of a coordinator given as http(s)://, ws(s):// or a websocket URL."""
    parts = urlsplit(coordinator.strip())
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    for suffix in (HOSTS_WS_PATH, "/api/andy/v1", "/api/andy"):
        path = path.removesuffix(suffix)
    return urlunsplit((scheme, parts.netloc, path + "/health", "", ""))


CHECKS = {
    "refused": "Is the coordinator running at {url} (andy-host coordinator serve)? Is the port right? "
               "A coordinator on --host 127.0.0.1 takes connections from its own machine only (--host 0.0.0.0).",
    "dns": "Is the host name in {url} spelled right, and does this machine's DNS know it?",
    "unreachable": "Is the address in {url} right, and is there a route to it (VPN, network)?",
    "timeout": "Is a firewall dropping the connection (the coordinator's port must accept TCP), "
               "or is the address in {url} wrong?",
    "certificate": "The coordinator's TLS certificate is not trusted here: pass --ca-file (agent.ca_file) "
                   "with the CA certificate that signed it, or see docs/tls.md.",
    "tls": "http vs https: the coordinator may serve plain http; then use http:// in --coordinator.",
    "disconnected": "http vs https: if the coordinator is behind TLS (a reverse proxy), use https://.",
    "http": "Is {url} an andy-host coordinator? A reverse proxy in front of it must pass websocket "
            "upgrades on " + HOSTS_WS_PATH + " (docs/tls.md).",
    "protocol": "Is {url} an andy-host coordinator of a version this host speaks?",
    "other": "Check --coordinator (agent.coordinator) and the network.",
}


def checklist(failure: Failure, coordinator: str) -> str:
    """What to check for ``failure``, ending with the ``/health`` URL to try."""
    check = CHECKS.get(failure.kind, CHECKS["other"]).format(url=coordinator)
    return f"{check} Try: curl {health_url(coordinator)} (the agent keeps retrying meanwhile)"
