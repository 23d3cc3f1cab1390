"""Credit only for checked work: a stranger's client work is *held* until an answer
check covering it passes, and *voided* when one fails (AI Horde's escrow, BOINC's
credit after validation).

What this module owns: each host's :class:`Escrow` (held, credited and voided jobs and
measured tokens) and the three moves on it. Pure: no I/O, no clock.

- :func:`earn`: the relay counts a client job a host served. A trusted host (a
  reference) is credited at once, as is any host whose work nothing could check (no
  trusted host serves any model it serves: ``checkable=False``); a stranger's job is
  held.
- :func:`cover`: the checker takes a snapshot of what is held when the job it is about
  to check was answered.
- :func:`settle`: the check's outcome. Passed: what the cover held and is still held
  moves to credited and into ``Host.served`` / ``Host.tokens``, which the ledger
  (ledger.py) writes to the store at its next flush, so the leaderboard and key
  credit see it then. Failed: everything held is voided.

Credit is what ``Host.served`` / ``Host.tokens`` count (per connection, as the ledger
expects); the escrow itself is kept by host id for the coordinator's lifetime
(``Registry.escrows``), so it survives the host's reconnects, and a check that ends
after its host reconnected settles the same escrow. It lives in memory only: what is
still held when the coordinator restarts is lost (neither credited nor voided), and
in a replicated pool each replica holds the work of the hosts connected to it.

Quarantine: work a quarantined host serves is never credited, and the checker calls
:func:`forfeit` when a stranger is quarantined: what it held is voided and what checks
had credited it is taken back (the ledger writes a negative row), so a cheater that
passed checks on its honest jobs keeps no credit for the junk held beside them. What
a quarantined host holds is also voided at the next move on its escrow or ledger
flush (:func:`sweep`), so a later release does not credit work done before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from andy_host.coordinator.hosts.registry import Host


@dataclass(slots=True)
class Escrow:
    """One host id's client work: held for a check, credited, voided (jobs, tokens)."""

    held_jobs: int = 0
    held_tokens: int = 0
    credited_jobs: int = 0
    credited_tokens: int = 0
    voided_jobs: int = 0
    voided_tokens: int = 0
    ever_held_jobs: int = 0  # every job that was held, settled since or not: where a cover ends
    ever_held_tokens: int = 0
    checked_jobs: int = 0  # credited by checks (a stranger's): what a quarantine takes back
    checked_tokens: int = 0

    @property
    def empty(self) -> bool:
        return not (self.ever_held_jobs or self.ever_held_tokens or self.credited_jobs or self.credited_tokens
                    or self.voided_jobs or self.voided_tokens)


@dataclass(frozen=True, slots=True)
class Cover:
    """What was held when a checked job was answered: ``jobs`` and ``tokens``.

    ``through_jobs`` / ``through_tokens`` mark where the held work ended then (held work
    is settled oldest first), so a pass credits only work held before the cover that no
    other verdict settled since: not work held after it, nor work a failure voided in
    between. A cover made without them settles ``min(cover, held)``."""

    jobs: int = 0
    tokens: int = 0
    through_jobs: int | None = None
    through_tokens: int | None = None


def earn(host: Host, tokens: int, checkable: bool = True) -> None:
    """A client job ``host`` served, with ``tokens`` measured completion tokens.

    A trusted host is credited at once (``host.served``, ``host.tokens``), as is a host
    whose work cannot be checked now (``checkable`` false: no trusted host serves any
    model it serves); a stranger's job is held until a check covers it. A quarantined
    host's job is never credited: it is voided (a stranger's with what it held)."""
    escrow = host.escrow
    if host.trust.quarantined is not None:
        escrow.voided_jobs += 1
        escrow.voided_tokens += tokens
        sweep(host)
        return
    if host.trusted or not checkable:
        host.served += 1
        host.tokens += tokens
        escrow.credited_jobs += 1
        escrow.credited_tokens += tokens
        return
    escrow.held_jobs += 1
    escrow.held_tokens += tokens
    escrow.ever_held_jobs += 1
    escrow.ever_held_tokens += tokens


def forfeit(host: Host) -> None:
    """The host was quarantined: what it holds is voided, and what a check credited it
    (since this coordinator started) is taken back: moved to voided and off
    ``host.served`` / ``host.tokens``, so the ledger's next flush writes it as a
    negative row. A check that passed on some honest jobs does not keep the credit of
    junk held beside them. A trusted host keeps its credit (it was never checked)."""
    escrow = host.escrow
    _void(escrow)
    if host.trusted:
        return
    jobs, tokens = escrow.checked_jobs, escrow.checked_tokens
    escrow.checked_jobs = escrow.checked_tokens = 0
    escrow.credited_jobs -= jobs
    escrow.credited_tokens -= tokens
    escrow.voided_jobs += jobs
    escrow.voided_tokens += tokens
    host.served -= jobs
    host.tokens -= tokens


def cover(host: Host) -> Cover:
    """A snapshot of what ``host`` holds now (after voiding it if it is quarantined)."""
    sweep(host)
    escrow = host.escrow
    return Cover(escrow.held_jobs, escrow.held_tokens, escrow.ever_held_jobs, escrow.ever_held_tokens)


def settle(host: Host, cover: Cover, passed: bool) -> None:
    """A check covering ``cover`` passed or failed.

    Passed: what the cover holds and is still held moves from held to credited, and
    into ``host.served`` / ``host.tokens`` for the ledger to write (nothing while the
    host is quarantined: it is voided instead). Failed: everything held is voided."""
    escrow = host.escrow
    if not passed:
        _void(escrow)
        return
    if sweep(host):
        return
    if cover.through_jobs is None or cover.through_tokens is None:
        jobs, tokens = cover.jobs, cover.tokens
    else:  # held up to the cover, less what left the held since (oldest first)
        jobs = cover.through_jobs - (escrow.ever_held_jobs - escrow.held_jobs)
        tokens = cover.through_tokens - (escrow.ever_held_tokens - escrow.held_tokens)
    jobs = max(0, min(jobs, escrow.held_jobs))
    tokens = max(0, min(tokens, escrow.held_tokens))
    escrow.held_jobs -= jobs
    escrow.held_tokens -= tokens
    escrow.credited_jobs += jobs
    escrow.credited_tokens += tokens
    escrow.checked_jobs += jobs
    escrow.checked_tokens += tokens
    host.served += jobs
    host.tokens += tokens


def sweep(host: Host) -> bool:
    """Void what a quarantined host holds; True when it is quarantined."""
    if host.trust.quarantined is None:
        return False
    _void(host.escrow)
    return True


def _void(escrow: Escrow) -> None:
    escrow.voided_jobs += escrow.held_jobs
    escrow.voided_tokens += escrow.held_tokens
    escrow.held_jobs = escrow.held_tokens = 0


def figures(escrow: Escrow | None) -> dict[str, Any]:
    """How the admin API, pool status and a host's own credit show an escrow (zeros for
    a host id this coordinator has no escrow of)."""
    escrow = escrow or Escrow()
    return {
        "held": {"jobs": escrow.held_jobs, "tokens": escrow.held_tokens},
        "credited": {"jobs": escrow.credited_jobs, "tokens": escrow.credited_tokens},
        "voided": {"jobs": escrow.voided_jobs, "tokens": escrow.voided_tokens},
    }
