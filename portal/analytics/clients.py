"""Who is downloading: user-agent classes and privacy-preserving client addresses."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re

BROWSER = "browser"
MANAGER = "manager"  # download managers: many ranged connections, resumes
COMMAND_LINE = "cli"  # wget, curl and scripting libraries
OTHER = "other"
CLASSES = (BROWSER, MANAGER, COMMAND_LINE, OTHER)

# Lower-case substrings, checked in this order (IDM and Thunder also say "Mozilla").
_MANAGERS = re.compile(
    r"aria2|\b(idm|fdm|ndm|xdm|axel|uget)\b|internet download manager|free download manager"
    r"|motrix|thunder|xunlei|迅雷|ninja download|jdownloader")
_COMMAND_LINE = ("wget", "curl", "python-requests", "python-urllib", "httpie", "powershell",
                 "go-http-client", "okhttp", "libwww-perl", "java/")
_BROWSERS = ("mozilla/", "opera/")


@functools.lru_cache(maxsize=4096)  # a campus sends the same few hundred agents all day
def classify(user_agent: str) -> str:
    """browser / manager / cli / other, from the User-Agent header.

    wget and curl are "command line" (cli): one connection, often scripted; aria2, IDM,
    FDM, Motrix, Thunder (迅雷) and NDM are "download managers" (parallel ranged
    connections). An empty or unknown agent is "other".
    """
    ua = (user_agent or "").lower()
    if _MANAGERS.search(ua):
        return MANAGER
    if any(token in ua for token in _COMMAND_LINE):
        return COMMAND_LINE
    if ua.startswith(_BROWSERS):
        return BROWSER
    return OTHER


@functools.lru_cache(maxsize=65536)  # pure, and the same clients come back for every range
def truncate_ip(address: str) -> str:
    """The client's network, not its address: IPv4 to its /24, IPv6 to its /64.

    A /24 keeps the campus building or dormitory network (useful for capacity planning)
    without naming one machine; a /64 is what one IPv6 host or household gets.
    """
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return ""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def anonymous_key(client_ip: str, user_agent: str) -> str:
    """A stable, non-reversible key for a client without an account (public files)."""
    digest = hashlib.blake2b(f"{client_ip}|{user_agent}".encode(), digest_size=8).hexdigest()
    return f"a:{digest}"


def who_key(user_id: int | None, link_id: str | None, client_ip: str, user_agent: str) -> str:
    """Whom a download is counted for: the user, else the signed link, else the client."""
    if user_id is not None:
        return f"u:{user_id}"
    if link_id:
        return f"l:{link_id}"
    return anonymous_key(client_ip, user_agent)
