"""Which network addresses the builder's fetches may talk to (server-side request forgery protection).

The rules and the fetching itself live in :mod:`flamingo.io` (shared with the server); this module reads them
from a :class:`~flamingo.corpus.config.FetchConfig`.
"""

from __future__ import annotations

from flamingo.corpus.config import FetchConfig
from flamingo.io.addresses import AddressPolicy


def address_policy(config: FetchConfig) -> AddressPolicy:
    """The address policy of ``config`` (public addresses only unless ``allow_loopback``/``allow_private``)."""
    return AddressPolicy(allow_loopback=config.allow_loopback, allow_private=config.allow_private)


def address_refusal(address: str, config: FetchConfig) -> str | None:
    """Why ``address`` may not be contacted under ``config`` (a short reason), or None when it may."""
    return address_policy(config).refusal(address)
