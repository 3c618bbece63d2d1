"""The configuration a backup keeps: the PORTAL_ settings of the environment, secrets left out.

A backup copied to another place must not carry what signs sessions and links or opens the
directory, the database or the bucket. Left out, by name only (the value is never written):
the settings ``portal/settings.py`` declares secret (the secret key, the LDAP bind password,
the OIDC client secret), any other whose name says secret, password, token or key, and the
AWS keys. A password inside a URL (``postgresql://user:pw@host/db``) is replaced by ``***``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import fields
from urllib.parse import urlsplit, urlunsplit

from ..settings import Settings

_SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE|(^|_)KEY(_|$)")


def declared_secrets() -> set[str]:
    """The PORTAL_ names of the settings whose rule is ``settings.secret()``."""
    return {f"PORTAL_{spec.name.upper()}" for spec in fields(Settings)
            if spec.metadata["check"].__qualname__.startswith("secret.")}


def without_secrets(environ: Mapping[str, str] | None = None) -> dict:
    """``{"settings": {NAME: value}, "left_out": [NAME, ...]}`` of the PORTAL_ and AWS_
    variables (AWS_: where the bucket is, never the keys)."""
    environ = os.environ if environ is None else environ
    secret = declared_secrets()
    kept, left_out = {}, []
    for name in sorted(environ):
        if not (name.startswith("PORTAL_") or name.startswith("AWS_")):
            continue
        if name in secret or _SECRET_NAME.search(name.removeprefix("PORTAL_")):
            left_out.append(name)
            continue
        kept[name] = hide_password(environ[name])
    return {"settings": kept, "left_out": left_out}


def hide_password(value: str) -> str:
    """``value`` with the password of a URL replaced by ``***`` (anything else as it is)."""
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return value
    if not password or not parts.scheme:
        return value
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
