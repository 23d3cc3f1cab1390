"""What every backend adapter offers, and the errors they raise."""

from __future__ import annotations

import abc
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson

from andy_host.agent.backends.http import Post
from andy_host.config import BackendConfig
from andy_host.errors import CONTEXT_EXCEEDED, BackendError, BackendUnavailable
from andy_host.protocol import ChatRequest, CompletionRequest, ModelInfo, TokenLogprob, ToolCall
from andy_host.protocol.messages import MAX_CONTEXT

# What the adapters catch as "the backend could not be reached or stopped answering":
# aiohttp's connection and payload errors, OSError (refused, reset) and timeouts.
UNREACHABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError, TimeoutError)


class Body(Protocol):
    async def readany(self) -> bytes: ...


class HTTPResponse(Protocol):
    """What the adapters use of a response."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    async def text(self, encoding: str | None = None, errors: str = "strict") -> str: ...


@dataclass(slots=True)
class ChatPiece:
    """Content that arrived together (``pieces`` backend chunks), and how it ended:
    tool calls come whole, with the end; log probabilities with their tokens."""

    content: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    pieces: int = 1
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class Discovered:
    """A model as the backend names it, and as the pool will."""

    backend_id: str
    info: ModelInfo


@dataclass(slots=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    kind: str = ""

    def __init__(self, url: str, session: aiohttp.ClientSession, config: BackendConfig) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.config = config
        self.timeout = config.request_timeout  # a whole job's request, answer included
        self.probe_timeout = aiohttp.ClientTimeout(total=config.connect_timeout * 2)

    @abc.abstractmethod
    async def version(self) -> str | None: ...

    @abc.abstractmethod
    async def discover(self) -> list[Discovered]:
        """The models served now; raises BackendUnavailable when unreachable."""

    @abc.abstractmethod
    async def loaded(self) -> list[str]:
        """Backend ids of the models loaded in memory now."""

    @abc.abstractmethod
    async def features(self) -> set[str]:
        """What the backend supports besides chat (protocol FEATURE_*), continuation aside."""

    @abc.abstractmethod
    def chat(self, backend_id: str, request: ChatRequest) -> AsyncIterator[ChatPiece]: ...

    @abc.abstractmethod
    def complete(self, backend_id: str, request: CompletionRequest) -> AsyncIterator[ChatPiece]:
        """A raw prompt continued as is (no chat template)."""

    @abc.abstractmethod
    async def embed(self, backend_id: str, inputs: list[str]) -> Embeddings: ...

    async def _get_json(self, path: str) -> Any:
        try:
            async with self.session.get(self.url + path, timeout=self.probe_timeout) as resp:
                await raise_for_backend(resp)
                return await resp.json(content_type=None)
        except UNREACHABLE as exc:
            raise BackendUnavailable(f"{self.kind} is not reachable at {self.url}: {exc}") from None

    def _post(self, path: str, body: dict[str, Any], timeout: float) -> Post:
        """POST a JSON body (``async with``; orjson encodes it), retried once on a stale connection."""
        return Post(self.session, self.url + path, body,
                    aiohttp.ClientTimeout(total=timeout, connect=self.config.connect_timeout))

    async def _post_json(self, path: str, body: dict[str, Any], probe: bool = False) -> Any:
        """POST, then the answer's JSON; BackendUnavailable when the answer never came
        whole, BackendError (502) when it is not JSON."""
        timeout = self.config.connect_timeout * 2 if probe else self.timeout
        try:
            async with self._post(path, body, timeout) as resp:
                await raise_for_backend(resp)
                raw = await resp.read()
        except UNREACHABLE as exc:
            raise BackendUnavailable(f"{self.kind} request to {path} failed: {exc!r}") from None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BackendError(502, f"{self.kind} answered {path} with malformed JSON: {raw[:80]!r}") from None


async def line_batches(stream: Body) -> AsyncIterator[list[bytes]]:
    """The complete lines that have arrived, in batches: everything buffered is taken
    at once, so a fast backend's tokens travel together, and a slow one's singly,
    with no added wait either way."""
    rest = b""
    while True:
        data = await stream.readany()
        if not data:
            if rest.strip():
                yield [rest]
            return
        data = rest + data
        lines = data.split(b"\n")
        rest = lines.pop()
        batch = [line for line in lines if line.strip()]
        if batch:
            yield batch


def error_message(text: str) -> str:
    """The message out of an OpenAI-style or Ollama-style error body, else the text."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:500] or "no message"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return text.strip()[:500]


def token_count(value: Any) -> int | None:
    """A count of tokens a backend gave: a positive integer the protocol carries, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_CONTEXT:
        return value
    return None


def context_counts(text: str) -> tuple[int, int] | None:
    """llama-server's context overflow (HTTP 400, ``type: exceed_context_size_error``,
    with ``n_prompt_tokens`` and ``n_ctx``, the slot's context): the two counts, else None."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or error.get("type") != "exceed_context_size_error":
        return None
    prompt, context = token_count(error.get("n_prompt_tokens")), token_count(error.get("n_ctx"))
    return (prompt, context) if prompt is not None and context is not None else None


async def raise_for_backend(resp: HTTPResponse) -> None:
    if resp.status < 400:
        return
    text = await resp.text(errors="replace")
    retry_after: float | None = None
    header = resp.headers.get("Retry-After")
    if header:
        try:
            retry_after = float(header)
        except ValueError:
            retry_after = None
    counts = context_counts(text) if resp.status == 400 else None
    if counts is not None:
        raise BackendError(400, error_message(text), retry_after, code=CONTEXT_EXCEEDED,
                           prompt_tokens=counts[0], context=counts[1])
    raise BackendError(resp.status, error_message(text), retry_after)


MAX_TOOL_CALLS = 64  # the protocol's bound on one answer's calls
MIN_LOGPROB = -1e6


def logprob(value: Any) -> float:
    """A log probability the protocol carries: a number in [-1e6, 0]."""
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else MIN_LOGPROB
    return min(0.0, max(MIN_LOGPROB, number)) if number == number else MIN_LOGPROB


def token_logprobs(entries: Any) -> list[TokenLogprob]:
    """OpenAI's (and Ollama's) ``[{token, logprob, top_logprobs: [{token, logprob}]}]``."""
    out = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        top = entry.get("top_logprobs") or []
        out.append(TokenLogprob(
            token=str(entry.get("token", ""))[:64], logprob=logprob(entry.get("logprob")),
            top=[(str(t.get("token", ""))[:64], logprob(t.get("logprob"))) for t in top[:20] if isinstance(t, dict)],
        ))
    return out


def bounded_calls(calls: list[ToolCall]) -> list[ToolCall]:
    if len(calls) > MAX_TOOL_CALLS:
        raise BackendError(502, f"the model made {len(calls)} tool calls; at most {MAX_TOOL_CALLS} are relayed")
    for call in calls:
        if not call.name or len(call.name) > 128:
            raise BackendError(502, "the model called a tool with no name, or a name over 128 characters")
    return calls


def json_object(raw: bytes, who: str) -> dict[str, Any]:
    """One JSON object a backend sent in a stream; BackendError (502) for anything else."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BackendError(502, f"{who} sent a malformed chunk: {raw[:80]!r}") from None
    if not isinstance(event, dict):
        raise BackendError(502, f"{who} sent a chunk that is not an object")
    return event
