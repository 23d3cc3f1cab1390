"""The requests of jobs against small raw servers that answer the ways real ones can:
keep-alive, a connection the server closed while idle, bytes that are not HTTP,
silence, a refused connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from andy_host.agent.backends.http import Post

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Serve = Callable[[Handler], Awaitable[tuple[str, list[int]]]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
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
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", connections

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def post(session: aiohttp.ClientSession, url: str, body: dict[str, int], total: float = 5) -> Post:
    return Post(session, url, body, aiohttp.ClientTimeout(total=total, connect=2))


def answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def test_keep_alive_reuses_one_connection(serve: Serve) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                body = await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(answer(body))
            await writer.drain()

    url, connections = await serve(echo)
    async with aiohttp.ClientSession() as session:
        for i in range(5):
            async with post(session, url + "/v1/x", {"n": i}) as response:
                assert response.status == 200
                assert await response.read() == b'{"n":%d}' % i
    assert connections[0] == 1


async def test_a_connection_the_server_closed_while_idle_is_retried_once(serve: Serve) -> None:
    """llama-server closes idle keep-alive connections; the request that meets one closing
    is sent once more, on a new connection, before any byte of an answer."""
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await _read_request(reader)
        writer.write(answer(body))
        await writer.drain()
        await reader.read(1)  # the next request arrives on this connection...
        writer.transport.abort()  # ...and the server resets it instead of answering

    url, connections = await serve(one_then_close)
    async with aiohttp.ClientSession() as session:
        for i in range(3):
            async with post(session, url, {"n": i}) as response:
                assert await response.read() == b'{"n":%d}' % i
    assert connections[0] >= 3


async def test_garbage_silence_and_refusal_are_errors_not_hangs(serve: Serve) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        url, _ = await serve(garbage)
        with pytest.raises(aiohttp.ClientResponseError):
            async with post(session, url, {}, total=3):
                pass
        url, _ = await serve(silent)
        started = loop.time()
        with pytest.raises(TimeoutError):
            async with post(session, url, {}, total=0.3) as response:
                await response.read()
        assert loop.time() - started < 2
        with pytest.raises(aiohttp.ClientConnectorError):
            async with post(session, "http://127.0.0.1:1", {}):
                pass
