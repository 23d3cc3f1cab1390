"""The Redis and PostgreSQL fixtures start real servers that answer."""

from __future__ import annotations

from tests.harness.servers import PostgresServer, RedisServer


def test_redis_answers(redis_server: RedisServer, redis_url: str) -> None:
    assert redis_url == redis_server.url
    assert redis_server.command("SET", "k", "v") == "OK"
    assert redis_server.command("GET", "k") == "v"


def test_postgres_answers(postgres_server: PostgresServer, postgres_url: str) -> None:
    name = postgres_url.rsplit("/", 1)[1]
    assert postgres_server.psql("SELECT current_database()", database=name) == name
    assert postgres_server.create_database() != postgres_url
