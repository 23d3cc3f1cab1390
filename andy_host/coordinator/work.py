"""What a client asks of the pool, in the form hosts receive, and what a host must
support to take it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from andy_host.protocol import (
    FEATURE_COMPLETION,
    FEATURE_CONTINUE,
    FEATURE_JSON_SCHEMA,
    FEATURE_LOGPROBS,
    FEATURE_TOOL_CHOICE,
    ChatRequest,
    CompletionRequest,
    JobKind,
    Sampling,
    TokenLogprob,
    request_dict,
)

# A need that is the model's, not the backend's: its chat template takes tools.
NEED_TOOLS = "tools"


@dataclass(frozen=True, slots=True)
class Work:
    """One job for the pool: the wire request (a protocol JobRequest as JSON), the
    features a host needs for it (protocol FEATURE_* and NEED_TOOLS), and whether a
    partial answer may be continued on another host (plain text only: a cut tool call,
    JSON document or list of log probabilities cannot be stitched together)."""

    kind: JobKind
    model: str
    request: dict[str, Any]
    needs: frozenset[str] = field(default_factory=frozenset)
    continuable: bool = True

    def continued(self, partial: str, tokens: int) -> dict[str, Any]:
        """The request that continues ``partial`` on another host (which needs
        :meth:`continue_needs`)."""
        follow = dict(self.request)
        if "max_tokens" in follow:
            follow["max_tokens"] = max(1, follow["max_tokens"] - tokens)
        if self.kind == "complete":  # a raw prompt continues by growing: every host can
            follow["prompt"] = follow["prompt"] + partial
            return follow
        follow["messages"] = [*follow["messages"], {"role": "assistant", "content": partial}]
        follow["continuation"] = True
        return follow

    def continue_needs(self) -> frozenset[str]:
        return self.needs if self.kind == "complete" else self.needs | {FEATURE_CONTINUE}


def prompt_chars(work: Work) -> int:
    request = work.request
    if work.kind == "embed":
        return sum(len(text) for text in request["input"])
    if work.kind == "complete":
        return len(request.get("prompt", ""))
    return sum(len(m.get("content") or "") for m in request["messages"])


def chat_work(model: str, request: ChatRequest) -> Work:
    """A chat job, needing what its parameters need."""
    if request.tool_choice == "none":  # no tool may be called: the tools are not sent at all
        request.tools, request.tool_choice = [], None
    needs = _sampling_needs(request)
    if request.tools:
        needs.add(NEED_TOOLS)
    if request.tool_choice in ("required", "function"):
        needs.add(FEATURE_TOOL_CHOICE)
    plain = not (request.tools or request.response_format or request.logprobs)
    return Work("chat", model, request_dict(request), frozenset(needs), continuable=plain)


def completion_work(model: str, request: CompletionRequest) -> Work:
    needs = _sampling_needs(request) | {FEATURE_COMPLETION}
    plain = not (request.response_format or request.logprobs)
    return Work("complete", model, request_dict(request), frozenset(needs), continuable=plain)


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


def asked_logprobs(request: dict[str, Any], logprobs: list[TokenLogprob] | None) -> list[TokenLogprob] | None:
    """What a host (or another replica) may relay of log probabilities: none unless the
    request asked for them, and as many alternatives per token as it asked."""
    if logprobs is None or not request.get("logprobs"):
        return None
    top = request.get("top_logprobs") or 0
    return [TokenLogprob(e.token, e.logprob, e.top[:top]) for e in logprobs]
