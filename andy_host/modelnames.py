"""Model names as Ollama writes them: ``namespace/name:tag`` with ``:latest`` implied."""

from __future__ import annotations

from collections.abc import Collection, Iterable


def canonical(name: str) -> str:
    """Lower-case, with ``:latest`` added when no tag is given."""
    name = name.strip().lower()
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        name = f"{name}:latest"
    return name


def served_name(backend_id: str) -> str:
    """A backend's model id turned into a pool name: a GGUF path becomes its stem."""
    name = backend_id.strip()
    if "/" in name and (name.endswith(".gguf") or name.startswith("/")):
        name = name.rsplit("/", 1)[-1]
    if name.endswith(".gguf"):
        name = name[: -len(".gguf")]
    return canonical(name)


def resolve(requested: str, available: Collection[str] | Iterable[str]) -> str | None:
    """The served model a client means, or None.

    Exact canonical match first; otherwise a short name (``andy-4``) matches a namespaced
    one (``sweaterdog/andy-4:latest``) only when exactly one served model ends that way.
    """
    want = canonical(requested)
    names = available if isinstance(available, (set, frozenset, dict)) else set(available)
    if want in names:
        return want
    suffix = "/" + want
    matches = [n for n in names if n.endswith(suffix)]
    if len(matches) == 1:
        return matches[0]
    return None
