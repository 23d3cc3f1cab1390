"""Reading fields of untrusted JSON objects: typed, bounded, or a ProtocolError that says why."""

from __future__ import annotations

import math
from typing import Any

from andy_host.errors import ProtocolError

MAX_NAME_LEN = 200
FLOAT32_MAX = 3.4028234663852886e38


def str_field(obj: dict[str, Any], key: str, *, max_len: int = MAX_NAME_LEN, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ProtocolError(f"field {key!r} must be a non-empty string of at most {max_len} chars")
    return value


def text_field(obj: dict[str, Any], key: str, default: str | None = None) -> str:
    """A string of any length (the frame limit bounds it), possibly empty."""
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise ProtocolError(f"field {key!r} must be a string")
    return value


def int_field(obj: dict[str, Any], key: str, *, lo: int, hi: int, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ProtocolError(f"field {key!r} must be an integer in [{lo}, {hi}]")
    return value


def num_field(obj: dict[str, Any], key: str, *, lo: float, hi: float, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
        raise ProtocolError(f"field {key!r} must be a number in [{lo}, {hi}]")
    return float(value)


def bool_field(obj: dict[str, Any], key: str, default: bool = False) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"field {key!r} must be true or false")
    return value


def obj_field(obj: dict[str, Any], key: str, *, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"field {key!r} must be an object")
    return value


def list_field(obj: dict[str, Any], key: str, limit: int) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > limit:
        raise ProtocolError(f"field {key!r} must be a list of at most {limit} items")
    return value


def str_list(obj: dict[str, Any], key: str, limit: int) -> list[str]:
    raw = obj.get(key, [])
    if not isinstance(raw, list) or len(raw) > limit or not all(
        isinstance(x, str) and 0 < len(x) <= MAX_NAME_LEN for x in raw
    ):
        raise ProtocolError(f"field {key!r} must be a list of strings")
    return list(raw)


def finite32(x: Any) -> bool:
    """A number that packs as a finite float32 (what base64 embeddings carry)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and abs(x) <= FLOAT32_MAX


def depth(value: Any, limit: int) -> int:
    """How deeply lists and objects nest in ``value``; raises past ``limit``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            if level > limit:
                raise ProtocolError(f"a value nests deeper than {limit} levels")
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest
