"""Client and host addresses as the coordinator counts them.

Caps and limits count by *address group*, not exact address: one IPv4 address is one
group (/32 by default), and an IPv6 host is its /64 (one customer's subnet, which a
single machine can fill with addresses at will). ``X-Forwarded-For`` is believed only
from ``trusted_proxies``, read across every header line: the client is the rightmost
address that is not one of our proxies.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(specs: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(spec, strict=False) for spec in specs]


def address_group(address: str, v4_prefix: int = 32, v6_prefix: int = 64) -> str:
    """``203.0.113.7`` -> ``203.0.113.7``; ``2001:db8::1`` -> ``2001:db8::/64``; other text as is."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address[:100]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = v4_prefix if ip.version == 4 else v6_prefix
    if prefix >= ip.max_prefixlen:
        return str(ip)
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_address(peer: str | None, forwarded: Sequence[str], trusted: Sequence[Network]) -> str:
    """The client's address: the socket's, or when the socket is a trusted proxy, the
    rightmost ``X-Forwarded-For`` hop (over all header lines) that is not trusted.

    ``forwarded`` holds every ``X-Forwarded-For`` header line, in order: a proxy that
    appends its own line must not let a spoofed first line through.
    """
    address = peer or "unknown"
    if not trusted or not _trusted(address, trusted):
        return address
    hops = [hop.strip() for line in forwarded for hop in line.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else address
