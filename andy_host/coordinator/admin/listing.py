"""How ``keys list`` / ``tokens list`` (and the admin API's listings) show a store's rows:
each row of ``Store.list_keys`` and ``Store.list_tokens`` with its status; and how
``coordinator hosts`` shows a host's escrow (held, credited, voided: trust/escrow.py).

Only formatting: the rows come from :mod:`andy_host.coordinator.store`; nothing here reads
the store. The CLI (``keys list``, ``tokens list``) and the admin API both show them so.
"""

from __future__ import annotations

from typing import Any

from andy_host.coordinator.access.keyscope import expired


def key_listing(row: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """A row of ``list_keys`` as the CLI's ``--json`` and the admin API show it: with its
    status (active, expired or revoked)."""
    gone = expired(row.get("expires"), now)
    return {**row, "status": "revoked" if row["revoked"] else "expired" if gone else "active"}


def token_listing(row: dict[str, Any]) -> dict[str, Any]:
    """A row of ``list_tokens`` as shown: ``trusted`` a boolean, with its status."""
    status = "revoked" if row["revoked"] else ("banned" if row["banned"] else "active")
    return {**row, "trusted": bool(row["trusted"]), "status": status}


ESCROW_COLUMNS = ("held", "credited", "voided")


def escrow_cells(escrow: dict[str, Any] | None) -> dict[str, str | None]:
    """A host's escrow as the ``coordinator hosts`` table shows it: ``jobs/tokens`` per
    column (``3/120``); None (shown ``-``) where the running coordinator has none."""
    if not escrow:
        return dict.fromkeys(ESCROW_COLUMNS)
    return {column: f"{escrow[column]['jobs']}/{escrow[column]['tokens']}" for column in ESCROW_COLUMNS}
