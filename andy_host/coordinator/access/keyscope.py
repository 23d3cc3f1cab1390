"""What one API key may do beyond its limits: until when (expiry) and which models (scope).

Pure parsing and decisions, no I/O. An expiry is given as a duration from now
(``30d``, ``12h``, ``90m``, ``3600s``) or an ISO date or time (``2026-01-31``, UTC unless
it names a zone); ``never`` removes one. A scope is a list of shell-style model
patterns, matched as the host's ``share_models`` are: ``llama3*`` matches
``llama3.2:latest``, and a pattern without a namespace also matches the name after it
(``andy-4*`` matches ``sweaterdog/andy-4:latest``). An empty scope allows every model.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import math
import re
import time
from collections.abc import Iterable, Sequence

MAX_PATTERNS = 64
MAX_PATTERN_CHARS = 200
NEVER = 0.0  # an update's expiry that removes the key's expiry
LATEST = 253402300799.0  # 9999-12-31 23:59:59 UTC: the latest expiry (a time people and time.gmtime can show)
_PATTERN = re.compile(r"^[A-Za-z0-9._:/*?\[\]!-]+$")
_DURATION = re.compile(r"^(\d{1,7})([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class ScopeError(ValueError):
    """A malformed expiry or model pattern; the message says what is wrong."""


def parse_expires(text: str, now: float | None = None) -> float:
    """A time (seconds since the epoch) from a duration or an ISO date/time; ``never`` is
    :data:`NEVER`. Raises :class:`ScopeError` for anything else or a time in the past or
    after the year 9999."""
    text = text.strip().lower()
    now = time.time() if now is None else now
    if text in ("never", "none", ""):
        return NEVER
    duration = _DURATION.match(text)
    if duration:
        return check_expires(now + int(duration.group(1)) * _UNIT[duration.group(2)], now, text)
    try:
        when = dt.datetime.fromisoformat(text.upper() if "t" in text else text)
    except ValueError:
        raise ScopeError(f"expires must be a duration (30d, 12h, 90m) or an ISO date (2026-01-31), "
                         f"not {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return check_expires(when.timestamp(), now, text)


def check_expires(at: float, now: float | None = None, given: object = None) -> float:
    """``at`` when it is a time after ``now`` and before the year 10000; else
    :class:`ScopeError` (a number in milliseconds or nanoseconds lands far beyond)."""
    shown = repr(given if given is not None else at)
    if not math.isfinite(at) or at > LATEST:
        raise ScopeError(f"expires {shown} is after the year 9999: give seconds since the epoch "
                         "(not milliseconds), a duration (30d) or an ISO date")
    if at <= (time.time() if now is None else now):
        raise ScopeError(f"expires {shown} is in the past")
    return at


def parse_models(patterns: Iterable[str] | str) -> tuple[str, ...]:
    """Validated patterns from a list or a comma-separated string ("*" = all models).

    Nothing at all (``""``, ``[]``: an unset shell variable, say) is refused rather than
    read as "every model": widening a key takes an explicit ``*``."""
    items = patterns.split(",") if isinstance(patterns, str) else list(patterns)
    cleaned: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ScopeError("models must be strings (model names or patterns)")
        pattern = item.strip().lower()
        if not pattern:
            continue
        if len(pattern) > MAX_PATTERN_CHARS or not _PATTERN.match(pattern):
            raise ScopeError(f"model pattern {item[:50]!r} is not a model name or shell pattern")
        if pattern not in cleaned:
            cleaned.append(pattern)
    if not cleaned:
        raise ScopeError("no model patterns given: name models or patterns, or '*' for every model")
    if len(cleaned) > MAX_PATTERNS:
        raise ScopeError(f"at most {MAX_PATTERNS} model patterns")
    return () if "*" in cleaned else tuple(cleaned)


def allows(scope: Sequence[str], model: str) -> bool:
    """May a key with this scope use ``model`` (a canonical served name)?"""
    if not scope:
        return True
    short = model.removesuffix(":latest")
    bare = model.rsplit("/", 1)[-1]
    names = {model, short, bare, bare.removesuffix(":latest")}
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in scope for name in names)


def visible(scope: Sequence[str], names: Iterable[str]) -> list[str]:
    """The names a key with this scope may see, in their order."""
    return [n for n in names if allows(scope, n)]


def expired(expires: float | None, now: float | None = None) -> bool:
    return expires is not None and expires != NEVER and expires <= (time.time() if now is None else now)


def when_text(at: float | None) -> str:
    """An expiry for people: ``never`` or a UTC time."""
    if at is None or at == NEVER:
        return "never"
    if not math.isfinite(at) or at > LATEST:  # written before expiries were bounded
        return "after 9999"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))
