"""API keys and host tokens: format, checksum and hashing (no I/O).

A secret looks like ``andy_sk_<32 base32 chars><6 checksum chars>`` (API key),
``andy_ht_...`` (host token) or ``andy_hs_...`` (host secret): a recognisable prefix, 160 random bits, and a
checksum, so a mistyped secret is rejected before any lookup. Only the SHA-256 of
a secret is stored; comparisons are constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

API_KEY_PREFIX = "andy_sk_"
HOST_TOKEN_PREFIX = "andy_ht_"
HOST_SECRET_PREFIX = "andy_hs_"  # issued to an open-enrolment host at its first hello
_BODY_LEN = 32  # base32 of 20 random bytes
_SUM_LEN = 6
DISPLAY_LEN = 14  # characters shown in listings: prefix and a few of the body


def _checksum(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:_SUM_LEN]


def new_secret(prefix: str) -> str:
    body = base64.b32encode(secrets.token_bytes(20)).decode().lower()
    return f"{prefix}{body}{_checksum(body)}"


def well_formed(secret: str, prefix: str) -> bool:
    """Prefix, length and checksum are right (says nothing about whether it exists)."""
    if not secret.startswith(prefix) or len(secret) != len(prefix) + _BODY_LEN + _SUM_LEN:
        return False
    body, check = secret[len(prefix) : -_SUM_LEN], secret[-_SUM_LEN:]
    return hmac.compare_digest(_checksum(body), check)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time equality of two strings (any characters: compared as UTF-8)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))
