"""What crosses between replicas when one runs a job for another (no I/O).

Replica A posts the job to B's internal endpoint (``INTERNAL_JOBS_PATH``) with the
shared ``replica_secret`` as its bearer token. B answers ``200`` with one JSON object
per line (NDJSON), as its relay yields them: ``chunk`` and ``done`` in the very form
hosts send them (so A decodes them with the same validation and bounds as a host's
frames: another replica's word is worth no more than a host's), ``restart`` (a
non-streamed answer starts over), and at most one last ``fail`` carrying the error
B's relay ended with. A stream that ends without ``done`` or ``fail`` was cut: B died.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from andy_host.coordinator.pool.relay import RESTART, Restart
from andy_host.coordinator.pool.work import Work
from andy_host.errors import APIError, ProtocolError, StreamBroken
from andy_host.protocol import Chunk, Done, TokenLogprob, decode_host_object, encode, load_object
from andy_host.protocol.requests import read_request, request_dict

INTERNAL_JOBS_PATH = "/api/andy/internal/jobs"
REPLICA_HEADER = "X-Andy-Replica"
MAX_NEEDS = 16
MAX_CLIENT = 256


@dataclass(frozen=True, slots=True)
class CrossJob:
    """A job one replica asks another to run on its hosts."""

    work: Work
    client: str
    stream: bool
    trusted_only: bool
    trace: str | None
    budget: float  # seconds left of the request at the asking replica


def job_body(job: CrossJob) -> bytes:
    work = job.work
    return orjson.dumps({
        "kind": work.kind, "model": work.model, "request": request_dict(work.request), "needs": sorted(work.needs),
        "continuable": work.continuable, "client": job.client, "stream": job.stream,
        "trusted_only": job.trusted_only, "trace": job.trace, "budget": job.budget,
    })


def read_job(raw: bytes) -> CrossJob:
    """The job another replica sent, checked as a client's would be (ProtocolError)."""
    obj = load_object(raw)
    kind, model, request, needs = obj.get("kind"), obj.get("model"), obj.get("request"), obj.get("needs")
    if kind not in ("chat", "complete", "embed") or not isinstance(model, str) or not isinstance(request, dict):
        raise ProtocolError("a job needs kind, model and request")
    typed = read_request(kind, request)  # the request as a host will read it: typed and bounded
    if not isinstance(needs, list) or len(needs) > MAX_NEEDS or not all(isinstance(n, str) for n in needs):
        raise ProtocolError("needs must be a short list of names")
    client, trace, budget = obj.get("client", ""), obj.get("trace"), obj.get("budget")
    if not isinstance(client, str) or len(client) > MAX_CLIENT or not (trace is None or isinstance(trace, str)):
        raise ProtocolError("client and trace must be short strings")
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not 0 < budget <= 86400:
        raise ProtocolError("budget must be a number of seconds")
    work = Work(kind, model, typed, frozenset(needs), continuable=bool(obj.get("continuable", True)))
    return CrossJob(work, client, bool(obj.get("stream", True)), bool(obj.get("trusted_only", False)),
                    trace[:64] if trace else None, float(budget))


LOGPROBS_PER_LINE = 256  # log probability entries per chunk line at most


def split_chunk(chunk: Chunk, max_chars: int) -> list[Chunk]:
    """``chunk`` as chunks small enough for one line each at the other replica: the
    relay merges pieces that arrived together, and one merged chunk of a long answer
    (UTF-8, JSON escapes) could exceed the line limit there, which would read as a lost
    route. Content is cut at ``max_chars``; with log probabilities, at token boundaries."""
    logprobs = chunk.logprobs or []
    alternatives = sum(len(alt) for entry in logprobs for alt, _ in entry.top)
    if len(chunk.content) + alternatives <= max_chars and len(logprobs) <= LOGPROBS_PER_LINE:
        return [chunk]
    if chunk.logprobs:
        return _split_by_tokens(chunk, max_chars)
    pieces = [chunk.content[i:i + max_chars] for i in range(0, len(chunk.content), max_chars)]
    return [Chunk(chunk.id, piece, tokens) for piece, tokens in zip(pieces, _share(chunk.tokens, len(pieces)),
                                                                      strict=True)]


def _split_by_tokens(chunk: Chunk, max_chars: int) -> list[Chunk]:
    logprobs = chunk.logprobs or []
    if "".join(t.token for t in logprobs) != chunk.content:
        return [chunk]  # the tokens do not spell the content: not cut (rare; the line may be refused)
    groups: list[list[TokenLogprob]] = [[]]
    chars = text = 0
    for entry in logprobs:
        size = len(entry.token) + sum(len(alt) for alt, _ in entry.top)
        if text and (len(groups[-1]) >= LOGPROBS_PER_LINE or chars + size > max_chars):
            groups.append([])  # a new line only after some content: no chunk goes without
            chars = text = 0
        groups[-1].append(entry)
        chars, text = chars + size, text + len(entry.token)
    if not text and len(groups) > 1:
        tail = groups.pop()
        groups[-1] += tail  # trailing tokens without text join the line before
    shares = _share(chunk.tokens, len(groups))
    return [Chunk(chunk.id, "".join(t.token for t in group), tokens, group)
            for group, tokens in zip(groups, shares, strict=True)]


def _share(total: int, parts: int) -> list[int]:
    """``total`` tokens over ``parts`` chunks, at least one each (what a chunk claims is
    checked against its text at the other replica anyway)."""
    base, extra = divmod(max(total, parts), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def item_line(item: Chunk | Done | Restart) -> bytes:
    if isinstance(item, Restart):
        return b'{"type":"restart"}\n'
    item.id = "x"  # the job's id at this replica means nothing at the other
    return encode(item).encode() + b"\n"


def failure_line(error: APIError) -> bytes:
    return orjson.dumps({
        "type": "fail", "status": error.status, "message": error.message, "error_type": error.type,
        "code": error.code, "param": error.param, "headers": error.headers,
        "broken": isinstance(error, StreamBroken),
    }) + b"\n"


def read_line(line: bytes) -> Chunk | Done | Restart | APIError:
    """One line from the running replica (ProtocolError when it is not one)."""
    obj = load_object(line)
    kind = obj.get("type")
    if kind == "restart":
        return RESTART
    if kind == "fail":
        return _failure(obj)
    message = decode_host_object(obj)
    if not isinstance(message, (Chunk, Done)):
        raise ProtocolError(f"unexpected {kind!r} from a replica")
    return message


def _failure(obj: dict[str, Any]) -> APIError:
    status, message = obj.get("status"), obj.get("message")
    if not isinstance(status, int) or not 400 <= status <= 599 or not isinstance(message, str):
        raise ProtocolError("a failure needs a status and a message")
    message = message[:1000]
    if obj.get("broken"):
        return StreamBroken(message)
    headers = obj.get("headers")
    safe = {k: str(v)[:64] for k, v in headers.items() if k == "Retry-After"} if isinstance(headers, dict) else {}
    return APIError(status, message, type=_short(obj.get("error_type")) or "server_error",
                    code=_short(obj.get("code")), param=_short(obj.get("param")), headers=safe)


def _short(value: Any) -> str | None:
    return value[:64] if isinstance(value, str) else None


class Lines:
    """Splits a byte stream into lines, none longer than ``limit`` (ProtocolError).

    Linear in the bytes fed, however they are cut: only new data is searched for line
    ends, and a partial line grows in place (a peer sending a byte at a time must not
    make each byte cost the whole line again)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._check(len(self.buffer) + end - start)
            line = bytes(self.buffer) + data[start:end] if self.buffer else data[start:end]
            self.buffer.clear()
            if line:
                lines.append(line)
            start = end + 1
        self._check(len(self.buffer) + len(data) - start)
        self.buffer += data[start:]
        return lines

    def _check(self, size: int) -> None:
        if size > self.limit:
            raise ProtocolError(f"a line from a replica is over {self.limit} bytes")
