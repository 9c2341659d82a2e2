"""Which network addresses the fetcher may talk to (server-side request forgery protection).

A host name is resolved once, every resolved address is checked, and the connection is then made to
a checked address (never re-resolved), so DNS rebinding cannot swap in a private address between the
check and the connection. The address actually connected to is checked again after connecting.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from flamingo import netaddr
from flamingo.build.config import FetchConfig


class RefusedAddress(Exception):
    """The URL's host resolves to an address the configuration does not allow."""


def address_refusal(address: str, config: FetchConfig) -> str | None:
    """Why ``address`` may not be contacted under ``config`` (a short reason), or None when it may."""
    return netaddr.address_refusal(address, config.allow_loopback, config.allow_private)


@dataclass(frozen=True)
class Target:
    """A checked place to connect to: the name for Host/SNI and the address for the socket."""

    host: str
    port: int
    address: str
    family: int


def resolve(host: str, port: int, config: FetchConfig) -> Target:
    """Resolve ``host`` and return a permitted address; raise ``RefusedAddress`` if any address is refused.

    Refusing when *any* resolved address is forbidden (not only the first) keeps a name that resolves
    to both a public and a private address from being used to reach the private one.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConnectionError(f"cannot resolve {host!r}: {e}") from e
    if not infos:
        raise ConnectionError(f"cannot resolve {host!r}: no addresses")
    for _family, _type, _proto, _name, sockaddr in infos:
        reason = address_refusal(str(sockaddr[0]), config)
        if reason is not None:
            raise RefusedAddress(f"{host} resolves to {sockaddr[0]} ({reason})")
    family, _, _, _, sockaddr = infos[0]
    return Target(host=host, port=port, address=str(sockaddr[0]), family=family)


def connect(target: Target, timeout: float, config: FetchConfig) -> socket.socket:
    """Open a TCP connection to ``target.address`` and check the peer address once connected."""
    sock = socket.create_connection((target.address, target.port), timeout=timeout)
    peer = str(sock.getpeername()[0])
    reason = address_refusal(peer, config)
    if reason is not None:
        sock.close()
        raise RefusedAddress(f"connected peer {peer} is refused ({reason})")
    return sock
