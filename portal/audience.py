"""Who may read what the public must not: /metrics, and the reasons behind /healthz and
/readyz (an exception's text, an internal address).

The operators: a client whose address is in ``PORTAL_METRICS_ALLOW`` (loopback by default:
Prometheus or a probe on the node itself), or one that sends ``Authorization: Bearer
PORTAL_METRICS_TOKEN``. An address counts only when it is the client's: behind a proxy the
portal trusts (``PORTAL_TRUSTED_PROXIES``) it is the one that proxy names; a request that a
proxy forwarded without the portal trusting it (it carries X-Forwarded-For, Forwarded or
X-Real-IP) is nginx's loopback address speaking for someone else, and needs the token.
"""

from __future__ import annotations

import hmac
import ipaddress
from functools import lru_cache

from flask import request

from .config import settings

#: Fields by which a proxy says that it speaks for another client.
FORWARDED = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


@lru_cache(maxsize=16)
def _networks(allow: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(item) for item in allow)


def admitted(peer: str | None, forwarded: bool, authorization: str | None,
             allow: tuple[str, ...], token: str | bytes | None) -> bool:
    """Whether a request from ``peer`` (the client's address; ``forwarded``: an untrusted
    proxy's) with this Authorization field is an operator's."""
    if token and authorization:
        scheme, _, presented = authorization.partition(" ")
        expected = token.encode() if isinstance(token, str) else token
        if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(),
                                                              expected):
            return True
    if forwarded or not peer:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _networks(allow))


def is_operator() -> bool:
    """Whether the current request comes from the metrics audience (see the module)."""
    config = settings()
    forwarded = not config.trusted_proxies and any(name in request.headers
                                                   for name in FORWARDED)
    return admitted(request.remote_addr, forwarded, request.headers.get("Authorization"),
                    config.metrics_allow, config.metrics_token)
