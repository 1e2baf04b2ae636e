"""Who is calling: the source address behind trusted proxies, and whether it may call at all."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> Address | None:
    """An address as proxies write it (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``), or None."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; lists say a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: Address, networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)


class SourcePolicy:
    """The allow-list of source networks and the proxies whose X-Forwarded-For we believe."""

    def __init__(self, allowed: Sequence[Network], trusted_proxies: Sequence[Network]) -> None:
        self.allowed = tuple(allowed)
        self.trusted_proxies = tuple(trusted_proxies)

    def source(self, peer: str | None, forwarded_for: Iterable[str]) -> Address | None:
        """The caller's address; None when it cannot be known (then only an empty allow-list admits it).

        Each proxy appends the address it got the request from, so the list is
        only as trustworthy as the proxy that wrote each entry: walking from the
        right, the first address that is not one of our proxies was written by
        one of them, and is the client. Anything left of it the client may
        have made up.
        """
        address = parse_address(peer) if peer else None
        if address is None or not _within(address, self.trusted_proxies):
            return address
        hops = [hop for header in forwarded_for for hop in header.split(",")]
        for hop in reversed(hops):
            hop_address = parse_address(hop)
            if hop_address is None:
                return None  # a proxy of ours wrote garbage: do not guess
            if not _within(hop_address, self.trusted_proxies):
                return hop_address
            address = hop_address
        return address  # all proxies (or no header): the left-most we have

    def admits(self, address: Address | None) -> bool:
        if not self.allowed:
            return True
        return address is not None and _within(address, self.allowed)


def rate_key(address: Address | None) -> object:
    """What the rate limiter counts by: one IPv4 address, or one IPv6 /64 (what one host can use)."""
    if isinstance(address, ipaddress.IPv6Address):
        return ipaddress.IPv6Network((int(address) >> 64 << 64, 64))
    return address
