"""A small HTTP/1.1 client for the requests on every job's path to the backend.

Keep-alive connections to the one backend and httptools' parser (llhttp, in C). On
the benchmark machine aiohttp's client spent about 220 µs more per request than this
(p50 617 against 400 µs for a POST to the llama.cpp stub), and a host makes one such
request per job. The rare requests (model lists, health) still go through aiohttp.

A connection goes back to the pool only after a complete response that allows
keep-alive; a response left unread (an error, a cancelled job) closes its connection,
which is how the backend learns to stop generating. A request on a pooled connection
that the backend had closed meanwhile is sent once more on a new one, as long as no
byte of an answer came back.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from types import TracebackType
from typing import cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

from andy_host import __version__


class BackendConnectionError(ConnectionError):
    """The connection failed, closed early, or carried something that is not HTTP."""


class Response:
    """One response: status and headers once they arrived, then the body as it comes.

    ``content.readany()`` and ``text()`` behave as aiohttp's, so the adapters read
    either kind of response the same way.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.status = 0
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.content = self
        self.parser = httptools.HttpResponseParser(self)
        self.complete = False
        self.keep_alive = False  # read when the message completes (llhttp forgets it after)
        self.started = False  # a byte of the answer arrived
        self.error: BaseException | None = None
        self._loop = loop
        self._headers_done: asyncio.Future[None] = loop.create_future()
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._delimited = False  # by Content-Length or chunked encoding, not by closing

    # httptools callbacks -----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1")
        self.headers.add(key, value.decode("latin-1"))
        if key.lower() in ("content-length", "transfer-encoding"):
            self._delimited = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if not self._headers_done.done():
            self._headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True
        self._wake()

    # the connection's side ---------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.started = True
        self.parser.feed_data(data)

    def closed(self, exc: BaseException | None) -> None:
        """The connection ended; fine only for a body delimited by the close itself."""
        if self.complete:
            return
        if self._headers_done.done() and not self._delimited and exc is None:
            self.on_message_complete()
            return
        self.fail(BackendConnectionError(f"the backend closed the connection{f': {exc}' if exc else ''}"))

    def fail(self, exc: BaseException) -> None:
        if self.error is None and not self.complete:
            self.error = exc
        if not self._headers_done.done():
            self._headers_done.set_exception(exc)
            self._headers_done.exception()  # retrieved here; the request raises it itself
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # the reader's side -------------------------------------------------------------

    async def wait_headers(self) -> None:
        await self._headers_done

    async def readany(self) -> bytes:
        """What has arrived of the body, at least one byte; b"" at its end."""
        while not self._chunks:
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            self._waiter = self._loop.create_future()
            await self._waiter
        if len(self._chunks) == 1:
            return self._chunks.popleft()
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    async def read(self) -> bytes:
        parts = []
        while data := await self.readany():
            parts.append(data)
        return b"".join(parts)

    async def text(self, encoding: str | None = None, errors: str = "strict") -> str:
        return (await self.read()).decode(encoding or "utf-8", errors)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass it

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: this connection is not usable
            self.abort()
            return
        try:
            response.feed(data)
        except httptools.HttpParserError as exc:
            response.fail(BackendConnectionError(f"the backend's answer is not valid HTTP: {exc}"))
            self.abort()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.response is not None:
            self.response.closed(exc)

    def abort(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()

    @property
    def usable(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()


class BackendHTTP:
    """Keep-alive HTTP/1.1 to one backend base URL (http or https)."""

    def __init__(self, base_url: str, connect_timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self.prefix = parts.path.rstrip("/")
        self.connect_timeout = connect_timeout
        default_port = self.port == (443 if self.ssl else 80)
        self.host_header = (parts.hostname if default_port else f"{parts.hostname}:{self.port}").encode("idna")
        self._idle: list[_Connection] = []

    def post(self, path: str, body: bytes, timeout: float) -> Exchange:
        """``async with client.post(path, body, timeout) as response: ...``"""
        head = b"POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: andy-host/%s\r\nAccept: */*\r\n" \
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
                   (self.prefix + path).encode(), self.host_header, __version__.encode(), len(body))
        return Exchange(self, head + body, timeout)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _, connection = await loop.create_connection(_Connection, self.host, self.port, ssl=self.ssl)
        return connection

    def _acquire_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.usable:
                return connection
        return None

    def _release(self, connection: _Connection, response: Response) -> None:
        connection.response = None
        if response.complete and response.error is None and response.keep_alive and connection.usable:
            self._idle.append(connection)
        else:
            connection.abort()

    def close(self) -> None:
        for connection in self._idle:
            connection.abort()
        self._idle.clear()


class Exchange:
    """One request and its response, as an async context manager."""

    def __init__(self, client: BackendHTTP, request: bytes, timeout: float) -> None:
        self.client, self.request, self.timeout = client, request, timeout
        self.connection: _Connection | None = None
        self.response: Response | None = None
        self.timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> Response:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.timeout, self._expire)
        try:
            pooled = self.client._acquire_idle()
            try:
                return await self._send(pooled or await self.client._connect(), loop)
            except BackendConnectionError:
                if pooled is None or (self.response is not None and self.response.started):
                    raise
                # the backend had closed this idle connection: once more, on a new one
                return await self._send(await self.client._connect(), loop)
        except BaseException:
            self._finish()
            raise

    async def _send(self, connection: _Connection, loop: asyncio.AbstractEventLoop) -> Response:
        if self.connection is not None:
            self.connection.abort()
        self.connection = connection
        self.response = response = Response(loop)
        connection.response = response
        assert connection.transport is not None
        connection.transport.write(self.request)
        await response.wait_headers()
        return response

    def _expire(self) -> None:
        if self.response is not None:
            self.response.fail(TimeoutError(f"no complete answer from the backend within {self.timeout:.0f}s"))
        if self.connection is not None:
            self.connection.abort()

    def _finish(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.connection is not None and self.response is not None:
            self.client._release(self.connection, self.response)
        elif self.connection is not None:
            self.connection.abort()
        self.connection = None

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._finish()
