"""The agent's job client (andy_host/agent/backends/http.py) against small raw servers
that answer the ways real ones can: keep-alive, a body ended by closing the
connection, bytes that are not HTTP, silence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from andy_host.agent.backends.http import BackendConnectionError, BackendHTTP

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[str, list[int]]]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> tuple[str, list[int]]:
        connections = [0]

        async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections[0] += 1
            try:
                await handler(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(counted, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}", connections

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_keep_alive_reuses_one_connection(serve: Callable[[Handler], Awaitable[tuple[str, list[int]]]]) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                body = await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()

    url, connections = await serve(echo)
    client = BackendHTTP(url, connect_timeout=2)
    for i in range(5):
        async with client.post("/v1/x", b'{"n": %d}' % i, timeout=5) as response:
            assert response.status == 200
            assert response.headers.get("content-type") == "application/json"
            assert await response.read() == b'{"n": %d}' % i
    assert connections[0] == 1
    client.close()


async def test_body_ended_by_closing_the_connection(serve: Callable[[Handler], Awaitable[tuple[str, list[int]]]]) -> None:
    async def old_style(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await writer.drain()
        writer.write(b"part two")
        await writer.drain()

    url, _ = await serve(old_style)
    async with BackendHTTP(url, connect_timeout=2).post("/", b"{}", timeout=5) as response:
        assert await response.text() == "part one, part two"


async def test_garbage_and_silence_are_errors_not_hangs(
    serve: Callable[[Handler], Awaitable[tuple[str, list[int]]]],
) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    url, _ = await serve(garbage)
    with pytest.raises(BackendConnectionError, match="not valid HTTP"):
        async with BackendHTTP(url, connect_timeout=2).post("/", b"{}", timeout=3):
            pass
    url, _ = await serve(silent)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with BackendHTTP(url, connect_timeout=2).post("/", b"{}", timeout=0.3):
            pass
    assert loop.time() - started < 2
    with pytest.raises(OSError):
        async with BackendHTTP("http://127.0.0.1:1", connect_timeout=2).post("/", b"{}", timeout=3):
            pass
