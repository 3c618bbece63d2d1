"""The absolute URLs the portal hands out: built from PORTAL_PUBLIC_URL, never from the
request's Host header.

A signed link, the service URL sent to CAS, OIDC's redirect URI and the API's
``download_url`` leave the portal and are followed later by someone else (a download
manager, the campus sign-in service, a script). Built from the Host header, a request
with ``Host: evil.example`` would hand out links to another site, or have CAS send a
fresh ticket there. Without PORTAL_PUBLIC_URL (development, the demo) the request's own
scheme and host are used, as Flask builds them.
"""

from __future__ import annotations

from flask import url_for

from .config import settings


def absolute_url(endpoint: str, **values) -> str:
    """The absolute URL of ``endpoint`` for others to follow: PORTAL_PUBLIC_URL and the
    endpoint's path, whatever Host the request came with; unset, the request's own."""
    base = settings().public_url
    if base is None:
        return url_for(endpoint, _external=True, **values)
    return base + url_for(endpoint, _external=False, **values)
