"""Who may join the pool, under which id: a pure decision, apart from the frame loop.

A host id is bound to the credential that first registered it: a host token, or in
open enrolment (no token) a host secret the coordinator issues at the first hello,
which the agent keeps in its state directory and presents in every later hello. A
hello that claims an id with another credential is refused, and the host holding that
id keeps it; ledger rows follow the id, so they follow the credential too.

Refusals carry a websocket close code in 4000-4999 that says whether retrying could
help: an unknown or revoked token, a refused id, a ban or an unsupported protocol are
fatal (the agent exits); a kick or a full address group are not.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from andy_host.protocol import (
    CLOSE_BANNED,
    CLOSE_FULL,
    CLOSE_ID_REFUSED,
    CLOSE_KICKED,
    CLOSE_TOKEN_REFUSED,
    Hello,
)


@dataclass(frozen=True, slots=True)
class Identity:
    """A registered host id and the credential bound to it."""

    host_id: str
    token_id: int | None
    secret_hash: str | None
    banned: str | None = None  # the ban's reason, when banned


@dataclass(frozen=True, slots=True)
class Credential:
    """What this hello presented, as the store sees it."""

    token_id: int | None  # a valid, live token's id
    token_given: bool  # a token was presented (valid or not)
    token_banned: str | None
    secret_hash: str | None  # digest of the presented secret


@dataclass(frozen=True, slots=True)
class Admitted:
    host_id: str
    register: bool  # store this id with this credential
    issue_secret: bool  # open enrolment, no secret yet: the welcome carries a new one


@dataclass(frozen=True, slots=True)
class Refusal:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Policy:
    enrolment: str  # "open" or "token"
    max_hosts_per_group: int


def _matches(identity: Identity, credential: Credential) -> bool:
    if identity.token_id is not None:
        return credential.token_id == identity.token_id
    return identity.secret_hash is not None and credential.secret_hash == identity.secret_hash


def _token_refusal(credential: Credential, policy: Policy) -> Refusal | None:
    if credential.token_banned is not None:
        return Refusal(CLOSE_BANNED, f"this host token is banned: {credential.token_banned}")
    if policy.enrolment == "token" and credential.token_id is None:
        if credential.token_given:
            return Refusal(CLOSE_TOKEN_REFUSED, "the host token is unknown or revoked")
        return Refusal(CLOSE_TOKEN_REFUSED, "this pool needs a valid host token (join --token andy_ht_...)")
    if credential.token_given and credential.token_id is None:
        return Refusal(CLOSE_TOKEN_REFUSED, "the host token is unknown or revoked")
    return None


def admit_host(
    hello: Hello,
    credential: Credential,
    identity: Identity | None,
    *,
    held: bool,
    hosts_in_group: int,
    kicked_for: float,
    policy: Policy,
    legacy: bool = False,
) -> Admitted | Refusal:
    """Decide one hello. ``identity``: the registration of ``hello.host_id`` (if any);
    ``held``: a connected host has that id now; ``hosts_in_group``: hosts connected
    from this address group, other than that one; ``kicked_for``: seconds left of a kick
    of this credential; ``legacy``: the id has ledger rows from before ids were bound
    to credentials, so it cannot be proven: the host gets a new id."""
    refusal = _token_refusal(credential, policy)
    if refusal is not None:
        return refusal
    if kicked_for > 0:
        return Refusal(CLOSE_KICKED, f"kicked by the admin; retry in {kicked_for:.0f}s")
    host_id = hello.host_id
    register = identity is None
    if identity is not None:
        if not _matches(identity, credential):
            return Refusal(
                CLOSE_ID_REFUSED,
                "this host id belongs to another host: delete host-NAME.id in the state dir to join as a new host",
            )
        if identity.banned is not None:
            return Refusal(CLOSE_BANNED, f"this host is banned: {identity.banned}")
    elif host_id is not None and held:
        return Refusal(CLOSE_ID_REFUSED, f"host id {host_id} is in use by another connection")
    elif legacy:
        host_id = None  # unprovable: a new id, so nobody can claim an old host's ledger row
    if policy.enrolment == "open" and hosts_in_group >= policy.max_hosts_per_group:
        return Refusal(CLOSE_FULL, f"at most {policy.max_hosts_per_group} hosts per address may join this pool")
    issue = credential.token_id is None and credential.secret_hash is None
    return Admitted(host_id=host_id or uuid.uuid4().hex[:16], register=register, issue_secret=issue)


@dataclass(slots=True)
class Kicks:
    """Credentials the admin kicked, refused until a time (monotonic)."""

    until: dict[str, float] = field(default_factory=dict)

    def kick(self, credential: str, seconds: float) -> None:
        self.until[credential] = time.monotonic() + seconds

    def left(self, credential: str) -> float:
        end = self.until.get(credential)
        if end is None:
            return 0.0
        left = end - time.monotonic()
        if left <= 0:
            del self.until[credential]
        return max(left, 0.0)


def credential_key(token_id: int | None, secret_hash: str | None, host_id: str) -> str:
    """What a kick sticks to: a token host's id on that token (the token's other hosts
    stay; ``ban`` is for the token), else the host's secret, else its id."""
    if token_id is not None:
        return f"token:{token_id}:{host_id}"
    return f"secret:{secret_hash}" if secret_hash else f"id:{host_id}"


KICKS = web.AppKey("kicks", Kicks)
