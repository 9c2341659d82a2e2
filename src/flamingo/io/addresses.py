"""Which IP addresses a server-side fetch may contact: one rule for the dataset builder, the web server and the
Python pipeline.

All of them fetch URLs that come from untrusted input (crawled pages, API requests), so all refuse loopback,
private, link-local, carrier-grade NAT, multicast, unspecified and reserved addresses unless told otherwise,
judging IPv4 addresses carried inside IPv6 (mapped, 6to4, Teredo) as the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT; not "private" in the stdlib


def unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address inside IPv4-mapped, 6to4 and Teredo IPv6 forms (so ::ffff:10.0.0.1 is 10.0.0.1)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
    return ip


def address_refusal(address: str, allow_loopback: bool = False, allow_private: bool = False) -> str | None:
    """Why ``address`` may not be contacted (``loopback``, ``private``, ``multicast``, ...), or None when it may."""
    try:
        ip = unwrap(ipaddress.ip_address(address.split("%")[0]))
    except ValueError:
        return f"not an IP address: {address!r}"
    if ip.is_loopback:
        return None if allow_loopback else "loopback"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_reserved:
        return "reserved"
    private = ip.is_private or ip.is_link_local or (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED)
    if private:
        return None if allow_private else "private"
    if not ip.is_global:
        return "reserved"  # documentation, benchmarking and other special-purpose ranges
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Which non-public addresses a fetch may contact; the default allows public unicast addresses only."""

    allow_loopback: bool = False
    """Allow 127.0.0.0/8 and ::1 (tests, local mirrors)."""
    allow_private: bool = False
    """Allow private, carrier-grade NAT and link-local ranges (10/8, 192.168/16, 169.254/16, fc00::/7, ...)."""

    def refusal(self, address: str) -> str | None:
        """Why ``address`` may not be contacted under this policy, or None when it may."""
        return address_refusal(address, self.allow_loopback, self.allow_private)
