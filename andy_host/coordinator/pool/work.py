"""What a client asks of the pool, in the form hosts receive, and what a host must
support to take it."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

from andy_host.coordinator.trust.standing import least_tokens
from andy_host.protocol import (
    FEATURE_COMPLETION,
    FEATURE_CONTINUE,
    FEATURE_JSON_SCHEMA,
    FEATURE_LOGPROBS,
    FEATURE_TOOL_CHOICE,
    ChatRequest,
    CompletionRequest,
    EmbedRequest,
    JobKind,
    JobRequest,
    Message,
    Sampling,
    TokenLogprob,
)

# A need that is the model's, not the backend's: its chat template takes tools.
NEED_TOOLS = "tools"
# A need that is the prompt's: a host whose served context is known must hold at least
# N tokens (``context>=N``), N a lower bound on the prompt's tokens from its characters
# (no tokenizer's token is longer than ``MAX_CHARS_PER_TOKEN`` characters): a prompt
# that would fit a host is never kept from it. A host whose context is not known may
# take any prompt (its backend says when it does not fit).
CONTEXT_NEED = "context>="


def context_floor(chars: int) -> int:
    """The fewest tokens ``chars`` characters of prompt can be."""
    return least_tokens(chars)


@functools.lru_cache(maxsize=4096)
def split_needs(needs: frozenset[str]) -> tuple[frozenset[str], int]:
    """``needs`` as the features a host must offer and the served context the prompt
    asks for (0: none); read once per set of needs, not once per host a pick weighs."""
    features, context = set(), 0
    for need in needs:
        if not need.startswith(CONTEXT_NEED):
            features.add(need)
        elif need[len(CONTEXT_NEED):].isdigit():
            context = int(need[len(CONTEXT_NEED):])
    return frozenset(features), context


def needed_context(needs: frozenset[str]) -> int:
    """The served context ``needs`` asks for (0: none)."""
    return split_needs(needs)[1]


def with_context(needs: frozenset[str], tokens: int) -> frozenset[str]:
    """``needs`` asking for a served context of at least ``tokens`` (never less than it
    asked before)."""
    if tokens <= needed_context(needs):
        return needs
    return feature_needs(needs) | {f"{CONTEXT_NEED}{tokens}"}


def feature_needs(needs: frozenset[str]) -> frozenset[str]:
    """``needs`` without the prompt's context: what a host's features must cover."""
    return split_needs(needs)[0]


@dataclass(frozen=True, slots=True)
class Work:
    """One job for the pool: the typed request (a protocol JobRequest, made a dict only
    when a job frame or a replica's call is written), the features a host needs for it
    (protocol FEATURE_* and NEED_TOOLS), and whether a partial answer may be continued
    on another host (plain text only: a cut tool call, JSON document or list of log
    probabilities cannot be stitched together)."""

    kind: JobKind
    model: str
    request: JobRequest
    needs: frozenset[str] = field(default_factory=frozenset)
    continuable: bool = True

    @property
    def stream(self) -> bool:
        """Whether the request asked for its answer as it comes (an embedding never does)."""
        return not isinstance(self.request, EmbedRequest) and self.request.stream

    def continued(self, partial: str, tokens: int) -> JobRequest:
        """The request that continues ``partial`` on another host (which needs
        :meth:`continue_needs`)."""
        request = self.request
        if isinstance(request, EmbedRequest):
            return request  # an embedding is never partial
        left = None if request.max_tokens is None else max(1, request.max_tokens - tokens)
        if isinstance(request, CompletionRequest):  # a raw prompt continues by growing: every host can
            return replace(request, max_tokens=left, prompt=request.prompt + partial)
        return replace(request, max_tokens=left, continuation=True,
                       messages=[*request.messages, Message("assistant", partial)])

    def continue_needs(self) -> frozenset[str]:
        return self.needs if self.kind == "complete" else self.needs | {FEATURE_CONTINUE}


def prompt_chars(work: Work) -> int:
    request = work.request
    if isinstance(request, EmbedRequest):
        return sum(len(text) for text in request.input)
    if isinstance(request, CompletionRequest):
        return len(request.prompt)
    return sum(len(m.content or "") for m in request.messages)


def chat_work(model: str, request: ChatRequest) -> Work:
    """A chat job, needing what its parameters need."""
    if request.tool_choice == "none":  # no tool may be called: the tools are not sent at all
        request.tools, request.tool_choice = [], None
    needs = _sampling_needs(request)
    if request.tools:
        needs.add(NEED_TOOLS)
    if request.tool_choice in ("required", "function"):
        needs.add(FEATURE_TOOL_CHOICE)
    _add_context(needs, sum(len(m.content or "") for m in request.messages))
    plain = not (request.tools or request.response_format or request.logprobs)
    return Work("chat", model, request, frozenset(needs), continuable=plain)


def completion_work(model: str, request: CompletionRequest) -> Work:
    needs = _sampling_needs(request) | {FEATURE_COMPLETION}
    _add_context(needs, len(request.prompt or ""))
    plain = not (request.response_format or request.logprobs)
    return Work("complete", model, request, frozenset(needs), continuable=plain)


def _add_context(needs: set[str], chars: int) -> None:
    floor = context_floor(chars)
    if floor > 0:
        needs.add(f"{CONTEXT_NEED}{floor}")


def _sampling_needs(request: Sampling) -> set[str]:
    needs = set()
    if request.logprobs:
        needs.add(FEATURE_LOGPROBS)
    if request.response_format:
        needs.add(FEATURE_JSON_SCHEMA)
    return needs


# What each need is called where a client meets it: (parameter, what it asks for).
NEED_WORDS = {
    NEED_TOOLS: ("tools", "tool calls (a model whose chat template takes tools)"),
    FEATURE_TOOL_CHOICE: ("tool_choice", "a required tool call (`required` or a named function)"),
    FEATURE_JSON_SCHEMA: ("response_format", "structured output (a JSON object or schema)"),
    FEATURE_LOGPROBS: ("logprobs", "log probabilities"),
    FEATURE_COMPLETION: ("prompt", "text completion (a raw prompt, no chat template)"),
}


def asked_logprobs(request: JobRequest, logprobs: list[TokenLogprob] | None) -> list[TokenLogprob] | None:
    """What a host (or another replica) may relay of log probabilities: none unless the
    request asked for them, and as many alternatives per token as it asked."""
    if logprobs is None or isinstance(request, EmbedRequest) or not request.logprobs:
        return None
    top = request.top_logprobs or 0
    return [TokenLogprob(e.token, e.logprob, e.top[:top]) for e in logprobs]
