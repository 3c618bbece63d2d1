"""CAS 2.0/3.0 with python-cas: the login URL, service-ticket validation, single logout.

The service URL carries the page to return to (``next``), so it survives the round trip;
CAS checks that the validation names the same service URL the ticket was issued for.
"""

from __future__ import annotations

import requests
from cas import CASClient, CASClientV3

from ...redact import redact_tickets
from ...settings import Settings
from .mapping import DirectoryAccount, group_names, issuer_id, values


class CasUnavailable(Exception):
    """The CAS server could not be reached or answered something that is not CAS."""


class _TimedSession(requests.Session):
    """python-cas validates through a requests session without a timeout; a CAS server
    that hangs must not hold a worker for ever."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", self.timeout)
        return super().request(*args, **kwargs)


def _client(cfg: Settings, service_url: str) -> CASClient:
    return CASClient(version=cfg.cas_version, service_url=service_url,
                     server_url=cfg.cas_server_url, session=_TimedSession(10))


def issuer(cfg: Settings) -> str:
    """The issuer of CAS accounts in their bindings: the CAS server's URL."""
    return issuer_id(cfg.cas_server_url or "")


def login_url(cfg: Settings, service_url: str) -> str:
    """Where the browser goes to sign in at CAS."""
    return _client(cfg, service_url).get_login_url()


def logout_url(cfg: Settings, return_to: str) -> str:
    """CAS's own logout, coming back to ``return_to``."""
    return _client(cfg, return_to).get_logout_url(return_to)


def validate(cfg: Settings, service_url: str, ticket: str) -> DirectoryAccount | None:
    """The account the service ticket stands for, or None when CAS refuses it (unknown,
    expired, already used, issued for another service). CasUnavailable when CAS cannot
    answer."""
    try:
        uid, attributes, _pgtiou = _client(cfg, service_url).verify_ticket(ticket)
    except requests.RequestException as exc:  # its text names the URL, the ticket in it
        raise CasUnavailable(redact_tickets(str(exc))) from None
    except Exception as exc:  # python-cas parses with ElementTree: a non-XML answer
        raise CasUnavailable(f"not a CAS answer: {exc.__class__.__name__}") from exc
    if not uid:
        return None
    attrs = {k: values(v) for k, v in (attributes or {}).items()}
    name = attrs.get(cfg.cas_name_attribute, ())
    return DirectoryAccount("cas", uid, name[0] if name else uid,
                            group_names(attrs.get(cfg.cas_groups_attribute, ())), attrs,
                            issuer=issuer(cfg), subject=uid)


def logout_tickets(logout_request: str) -> list[str]:
    """The service tickets a CAS single-logout request (SAML LogoutRequest) names."""
    found = (CASClientV3.get_saml_slos(logout_request.encode("utf-8"))
             if logout_request else None)
    return [e.text.strip() for e in (found or []) if e.text and e.text.strip()]
