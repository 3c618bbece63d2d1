"""The portal's settings: one frozen, typed object, each default and rule declared once here.

``PORTAL_X`` in the environment becomes ``app.config["X"]`` (``from_prefixed_env``: JSON values
parsed) and, once ``config.finalize`` has checked it, the field ``x`` of :class:`Settings`,
read with ``config.settings()``. A value its rule refuses stops start-up with one line
(ConfigError). ``app.config`` keeps every key too, for Flask and its extensions.

It imports only the standard library, so that anything can read the settings without
building the app: ``from_environ`` gives gunicorn.conf.py the same values the app will see.
"""

import math
import os
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A setting that stops the portal from starting; the message says which and why."""


#: A field's rule: (its variable's name, the raw value) -> the value to keep, or ConfigError.
Check = Callable[[str, Any], Any]


def setting(default: Any, check: Check, **options: Any) -> Any:
    """A field with its default and its rule (``options`` go to dataclasses.field)."""
    return field(default=default, metadata={"check": check}, **options)


def _options(options: tuple) -> str:
    shown = [repr(option) for option in options]
    return ", ".join(shown[:-1]) + " or " + shown[-1]


def flag(*, optional: bool = False) -> Check:
    """True or false (JSON true/false, or 1/0); None too when ``optional``."""
    def check(name: str, value: Any) -> bool | None:
        if optional and value is None:
            return None
        if value not in (True, False):
            raise ConfigError(f"{name} must be true or false, not {value!r}")
        return bool(value)
    return check


def whole(low: int, high: int | None = None, *, unit: str = "", note: str = "",
          optional: bool = False) -> Check:
    """A whole number from ``low`` (to ``high``); None too when ``optional``."""
    def check(name: str, value: Any) -> int | None:
        if optional and value is None:
            return None
        if (isinstance(value, bool) or not isinstance(value, int) or value < low
                or (high is not None and value > high)):
            span = f">= {low}" if high is None else f"from {low} to {high}"
            raise ConfigError(f"{name} must be a whole number{unit} {span}{note}, "
                              f"not {value!r}")
        return value
    return check


def number(low: float = 0, high: float | None = None, *, above: bool = False,
           optional: bool = False) -> Check:
    """A finite number from ``low`` (``above`` it) to ``high``; None too when ``optional``."""
    def check(name: str, value: Any) -> float | None:
        if optional and value is None:
            return None
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or not (value > low if above else value >= low)
                or (high is not None and value > high)):
            span = (f"above {low}" if above else f">= {low}") + (
                "" if high is None else f" and at most {high}")
            raise ConfigError(f"{name} must be a number {span}, not {value!r}")
        return float(value)
    return check


def choice(*options: Any, wording: str | None = None) -> Check:
    """One of ``options``."""
    def check(name: str, value: Any) -> Any:
        if isinstance(value, bool) or value not in options:
            raise ConfigError(f"{name} must be {wording or _options(options)}, not {value!r}")
        return value
    return check


def text(*, optional: bool = False, blank_is_none: bool = False) -> Check:
    """A string (a path may be given as a path); None too when ``optional``."""
    def check(name: str, value: Any) -> str | None:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if blank_is_none and value == "":
            value = None
        if optional and value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be text, not {value!r}")
        return value
    return check


#: A host as PORTAL_PUBLIC_URL may name it: a DNS name or an IP (v6 in brackets), a port.
_HOST_AND_PORT = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def site_url() -> Check:
    """The address of a site's root: http or https, a host and maybe a port, no user, path,
    query or fragment (a trailing slash is dropped); None (or empty) too."""
    def check(name: str, value: Any) -> str | None:
        if value in (None, ""):
            return None
        example = "such as https://files.example.edu"
        if not isinstance(value, str) or not value.isprintable() or " " in value:
            raise ConfigError(f"{name} must be a URL {example}, not {value!r}")
        parts = urlsplit(value)
        try:
            port_ok = parts.port != 0
        except ValueError:  # past 65535
            port_ok = False
        if (parts.scheme.lower() not in ("http", "https")
                or not _HOST_AND_PORT.fullmatch(parts.netloc) or not port_ok):
            raise ConfigError(f"{name} must be an http or https URL of a host {example}, "
                              f"not {value!r}")
        if "?" in value or "#" in value:
            raise ConfigError(f"{name} must have no query or fragment, not {value!r}")
        if parts.path not in ("", "/"):
            raise ConfigError(f"{name} must name the root of its host (the portal is served "
                              f"at /, not under a path such as {parts.path!r}), not {value!r}")
        return f"{parts.scheme.lower()}://{parts.netloc}"
    return check


def texts() -> Check:
    """A list of strings, kept as a tuple."""
    def check(name: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{name} must be a list of text such as ["zh_CN", "en"], '
                              f"not {value!r}")
        return tuple(value)
    return check


def networks() -> Check:
    """Addresses and networks (CIDR: ``10.0.0.0/8``, ``::1``) as a JSON list or as text
    separated by commas or spaces, kept as a tuple of their canonical texts; an empty list
    names none."""
    def check(name: str, value: Any) -> tuple[str, ...]:
        import ipaddress

        items = value.replace(",", " ").split() if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f'{name} must be a list of addresses or networks such as '
                              f'["127.0.0.1", "10.0.0.0/8"], not {value!r}')
        try:
            return tuple(str(ipaddress.ip_network(item.strip(), strict=False))
                         for item in items)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return check


def secret() -> Check:
    """A signing key: text or bytes, never shown in a message; None (or empty) until finalize
    sets it."""
    def check(name: str, value: Any) -> str | bytes | None:
        if value in ("", b""):
            return None
        if value is not None and not isinstance(value, str | bytes):
            raise ConfigError(f"{name} must be a string, not a value of type "
                              f"{type(value).__name__} (not shown here)")
        return value
    return check


def time_zone() -> Check:
    """An IANA time zone name."""
    def check(name: str, value: Any) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (TypeError, ValueError, zoneinfo.ZoneInfoNotFoundError):
            raise ConfigError(f"{name} must be a time zone such as 'Asia/Shanghai', "
                              f"not {value!r}") from None
        return value
    return check


def parsed_by_finalize(name: str, value: Any) -> Any:
    """Checked by config.finalize with the one parser of its syntax (auth/throttle.py)."""
    return value


#: The sign-in methods PORTAL_AUTH_METHODS may list (portal/auth/sso/).
AUTH_METHODS = ("local", "cas", "ldap", "oidc")

#: The roles a directory account can be given, strongest first (portal/auth/sso/mapping.py).
SSO_ROLES = ("admin", "staff", "student")


def methods() -> Check:
    """A non-empty list of distinct sign-in methods, kept as a tuple."""
    def check(name: str, value: Any) -> tuple[str, ...]:
        if (not isinstance(value, list | tuple) or not value
                or not all(isinstance(v, str) and v in AUTH_METHODS for v in value)
                or len(set(value)) != len(value)):
            raise ConfigError(f"{name} must be a non-empty JSON list of distinct methods among "
                              f"{', '.join(AUTH_METHODS)} (such as [\"local\", \"ldap\"]), "
                              f"not {value!r}")
        return tuple(value)
    return check


def role_map() -> Check:
    """Which directory facts give a role: JSON ``{"admin": ["group:portal-admins"], "staff":
    ["eduPersonAffiliation=faculty"]}``, kept as a tuple of (role, rules) pairs."""
    def check(name: str, value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
        pairs = value.items() if isinstance(value, Mapping) else value
        try:
            kept = tuple((role, tuple(rules)) for role, rules in pairs)
        except (TypeError, ValueError):
            kept = None
        if kept is None or not all(
                role in SSO_ROLES and rules and all(
                    isinstance(r, str) and (r.startswith("group:") or "=" in r) for r in rules)
                for role, rules in kept):
            raise ConfigError(f'{name} must be JSON such as {{"admin": ["group:portal-admins"], '
                              f'"staff": ["eduPersonAffiliation=faculty"]}} (roles: '
                              f"{', '.join(SSO_ROLES)}), not {value!r}")
        return kept
    return check


#: The roles a download limit may name (models.ROLES), and who downloads without signing in.
LIMIT_ROLES = ("student", "staff", "admin", "anonymous")
#: Rate units, as nginx's limit_rate reads them: powers of 1024.
_RATE_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2,
               "MIB": 1024**2, "G": 1024**3, "GB": 1024**3, "GIB": 1024**3}
_RATE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")


@dataclass(frozen=True, slots=True)
class Limit:
    """One person's download limit: concurrent download connections (across all nodes) and
    bytes per second (across all their connections); None: no limit on that."""

    connections: int | None = None
    rate: int | None = None

    @property
    def unlimited(self) -> bool:
        """True when nothing is limited."""
        return self.connections is None and self.rate is None

    def joined(self, other: "Limit") -> "Limit":
        """The more generous of two limits, each dimension on its own (None is the most)."""
        def wider(a, b):
            return None if a is None or b is None else max(a, b)
        return Limit(wider(self.connections, other.connections), wider(self.rate, other.rate))


UNLIMITED = Limit()


def parse_rate(name: str, value: Any) -> int:
    """Bytes per second: a whole number, or text such as "512K", "4MB", "1.5M" (K, M, G are
    powers of 1024 as in nginx's limit_rate; B, KB/KiB, MB/MiB, GB/GiB are the same)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    unit = _RATE_UNITS.get(match.group(2).upper()) if match else None
    if unit is None or float(match.group(1)) * unit < 1:
        raise ConfigError(f'{name} must be bytes per second such as 4194304 or "4MB", '
                          f"not {value!r}")
    return int(float(match.group(1)) * unit)


def is_limit_key(key: Any) -> bool:
    """True for a key a download limit may have: a role, ``anonymous`` or ``group:NAME``."""
    return key in LIMIT_ROLES or (isinstance(key, str) and key.startswith("group:")
                                  and bool(key[6:].strip()))


def _json_object(name: str, value: Any, example: str) -> Mapping:
    """``value`` as a mapping: JSON text parsed, a built Settings' tuple of pairs taken back,
    None or empty text as {}; anything else is a ConfigError that shows ``example``."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(f"{name} must be a JSON object, not {value[:60]!r}") from None
    if isinstance(value, tuple):  # a built Settings' own value
        value = dict(value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a JSON object {example}, not {value!r}")
    return value


def download_limits() -> Check:
    """PORTAL_DOWNLOAD_LIMITS: a JSON object from a role (student, staff, admin, anonymous)
    or ``group:NAME`` to ``{"connections": N, "rate": R}`` (either may be left out: not
    limited; ``{}`` is unlimited). Kept as a tuple of (key, Limit); None or ``{}``: none."""
    def check(name: str, value: Any) -> tuple[tuple[str, Limit], ...]:
        value = _json_object(name, value, 'such as {"student": {"connections": 4, '
                                          '"rate": "4MB"}}')
        kept = []
        for key, entry in value.items():
            if isinstance(entry, Limit):
                kept.append((key, entry))
                continue
            where = f"{name}[{key!r}]"
            if not is_limit_key(key):
                raise ConfigError(f"{name}: unknown key {key!r} (a role: "
                                  f"{', '.join(LIMIT_ROLES)}, or group:NAME)")
            if not isinstance(entry, Mapping):
                raise ConfigError(f'{where} must be an object such as {{"connections": 4}}, '
                                  f"not {entry!r}")
            unknown = set(entry) - {"connections", "rate"}
            if unknown:
                raise ConfigError(f"{where}: unknown field {sorted(unknown)[0]!r} "
                                  f"(connections, rate)")
            connections = entry.get("connections")
            if connections is not None:
                connections = whole(1, 10_000)(f"{where}.connections", connections)
            rate = entry.get("rate")
            if rate is not None:
                rate = parse_rate(f"{where}.rate", rate)
            kept.append((key, Limit(connections, rate)))
        return tuple(kept)
    return check


#: The key of PORTAL_DOWNLOAD_LIMITS_LOCKED that locks every entry, and new ones too.
LOCK_ALL = "*"


def limit_locks() -> Check:
    """PORTAL_DOWNLOAD_LIMITS_LOCKED: a JSON object from a key of PORTAL_DOWNLOAD_LIMITS (or
    ``*``: every key) to the reason admins are shown, such as ``{"anonymous": "the campus
    uplink's share for guests, set by the network team"}``. Kept as a tuple of (key, reason);
    None or ``{}``: nothing locked."""
    def check(name: str, value: Any) -> tuple[tuple[str, str], ...]:
        value = _json_object(name, value, 'such as {"anonymous": "set by the network team"} '
                                          '(a key of PORTAL_DOWNLOAD_LIMITS, or "*" for all, '
                                          'and the reason admins are shown)')
        for key, reason in value.items():
            if not (key == LOCK_ALL or is_limit_key(key)):
                raise ConfigError(f"{name}: unknown key {key!r} (a role: "
                                  f"{', '.join(LIMIT_ROLES)}, group:NAME or *)")
            if not isinstance(reason, str) or not reason.strip():
                raise ConfigError(f"{name}[{key!r}] must be the reason, as text, "
                                  f"not {reason!r}")
        return tuple((key, reason.strip()) for key, reason in value.items())
    return check


#: A cookie's SameSite attribute (None: not sent).
SAMESITE = choice("Lax", "Strict", "None", None, wording="Lax, Strict or None")

#: SigV4 presigned URLs live at most seven days.
PRESIGN_MAX_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Settings:
    """Every PORTAL_ setting, checked; the field ``x`` is ``PORTAL_X`` / ``app.config["X"]``.

    A None that a comment explains ("None: ...") is resolved when the object is built, so
    a built Settings holds what the portal uses.
    """

    # -- the site -------------------------------------------------------------------------
    env: str = setting("development", text())  # "production" requires PORTAL_SECRET_KEY
    # The address the portal is reached at, from which every absolute URL it hands out is
    # built (signed links, CAS's service URL, OIDC's redirect URI, the API's download_url),
    # never from the request's Host header. None: the request's own (development); required
    # in production when AUTH_METHODS has cas or oidc.
    public_url: str | None = setting(None, site_url())
    testing: bool = setting(False, flag())  # Flask's TESTING
    # None: a random key kept in instance/ (config.finalize), refused in production
    secret_key: str | bytes | None = setting(None, secret(), repr=False)
    database_url: str | None = setting(None, text(optional=True))  # None: instance/portal.db
    redis_url: str = setting("redis://127.0.0.1:6379/0", text())
    storage_url: str | None = setting(None, text(optional=True))  # None: instance/storage
    sendfile: str = setting("direct", choice("direct", "x-accel"))
    x_accel_prefix: str = setting("/_protected", text())
    # How long nginx may reuse the portal's grant for a download (deploy/nginx.conf,
    # portal/download/fast.py): a revocation can take this long to reach nginx. 0: ask each time.
    nginx_grant_seconds: int = setting(1, whole(0, 3600))
    # S3 downloads: "proxy" (the portal streams the bytes) or "redirect" (302 to a presigned
    # URL valid this many seconds, after the portal has authorised and evaluated the request).
    s3_delivery: str = setting("proxy", choice("proxy", "redirect"))
    s3_presign_seconds: int = setting(300, whole(1, PRESIGN_MAX_SECONDS, unit=" of seconds"))
    link_ttl_seconds: int = setting(24 * 3600, whole(1))
    max_upload_bytes: int = setting(8 * 1024**3, whole(0))
    max_ranges: int = setting(64, whole(1))  # ranges one Range header may ask for
    upload_dir: str | None = setting(None, text(optional=True))  # None: see uploads/service.py
    password_hash_method: str = setting("scrypt", text())  # Werkzeug's KDF spec
    demo_big_file_mb: int = setting(100, whole(0))
    per_page: int = setting(20, whole(1))
    babel_default_locale: str = setting("zh_CN", text())
    languages: tuple[str, ...] = setting(("zh_CN", "en"), texts())

    # -- sessions and cookies ---------------------------------------------------------------
    # The session and remember-me cookies: never readable by scripts, not sent on cross-site
    # subrequests or POSTs, and HTTPS-only in production. These keys override Flask's and
    # Flask-Login's own defaults (which are not HttpOnly-and-Lax everywhere, never Secure);
    # None for SECURE means "true when ENV is production", so an operator's explicit
    # PORTAL_SESSION_COOKIE_SECURE=false (a TLS-less test bed) still wins.
    session_cookie_secure: bool | None = setting(None, flag(optional=True))
    session_cookie_httponly: bool = setting(True, flag())
    session_cookie_samesite: str | None = setting("Lax", SAMESITE)
    remember_cookie_secure: bool | None = setting(None, flag(optional=True))
    remember_cookie_httponly: bool = setting(True, flag())
    remember_cookie_samesite: str | None = setting("Lax", SAMESITE)
    # Flask-Login's own keys, which download/fast.py reads as Flask-Login does. "basic": a
    # changed client marks the session non-fresh; "strong" ends it (downloads take "basic" as
    # no protection, see extensions.PortalLoginManager).
    session_protection: str | None = setting("basic", choice("basic", "strong", None))
    remember_cookie_name: str = setting("remember_token", text())
    remember_cookie_refresh_each_request: bool = setting(False, flag())
    # A session and its remember-me cookie end this long after sign-in (tokens.py).
    session_lifetime_seconds: float = setting(14 * 24 * 3600, number(0, 366 * 86400, above=True))

    # -- sign-in limits ---------------------------------------------------------------------
    # Failed sign-ins (Flask-Limiter syntax; portal/auth/throttle.py): per account name and
    # client address, and per address (generous: a campus NATs many students) -- past those
    # the address is refused (429); per account over all addresses, the ceiling -- past it
    # attempts are delayed, never refused, so a stranger cannot lock the owner out.
    login_limit_account: str = setting("5 per minute;20 per hour", parsed_by_finalize)
    login_limit_ip: str = setting("100 per minute", parsed_by_finalize)
    login_limit_account_ceiling: str = setting("50 per hour", parsed_by_finalize)
    # How many proxies in front of the portal set X-Forwarded-For / -Proto (deploy/nginx.conf
    # is one). 0: the peer's address is the client's and those headers are not believed.
    trusted_proxies: int = setting(0, whole(0, note=" (the proxies in front of the portal)"))

    # -- sign-in methods (portal/auth/sso/; README "Campus single sign-on") -------------------
    # Local accounts (the form's password) stay for break-glass admins; the others add the
    # campus directory. Directory users never get a usable password in the portal.
    auth_methods: tuple[str, ...] = setting(("local",), methods())
    # A directory account signing in for the first time gets a portal user (false: only users
    # that `user sync-ldap` or an admin made may sign in).
    sso_auto_create: bool = setting(True, flag())
    sso_default_role: str = setting("student", choice(*SSO_ROLES))
    sso_role_map: tuple = setting((), role_map())  # the strongest matching role wins
    # LDAP (ldap3): sign-in by bind, groups from memberOf or a group search, `user sync-ldap`.
    ldap_url: str | None = setting(None, text(optional=True))  # ldap://host:389 or ldaps://
    ldap_start_tls: bool = setting(False, flag())
    ldap_ca_file: str | None = setting(None, text(optional=True))  # None: the system's CAs
    ldap_bind_dn: str | None = setting(None, text(optional=True))  # None: anonymous search
    ldap_bind_password: str | bytes | None = setting(None, secret(), repr=False)
    ldap_user_base: str | None = setting(None, text(optional=True))
    # Which entries are accounts: one that stops matching (a graduate, a locked account) can
    # no longer sign in, and sync-ldap disables its portal user.
    ldap_user_filter: str = setting("(objectClass=inetOrgPerson)", text())
    ldap_uid_attribute: str = setting("uid", text())
    ldap_name_attribute: str = setting("displayName", text())
    # The entry's stable id, what binds it to its portal user (an entry without it: its DN).
    ldap_subject_attribute: str = setting("entryUUID", text())
    ldap_group_source: str = setting("search", choice("search", "memberOf"))
    ldap_group_base: str | None = setting(None, text(optional=True))  # None: LDAP_USER_BASE's
    ldap_group_filter: str = setting("(objectClass=groupOfNames)", text())
    ldap_group_member_attribute: str = setting("member", text())
    ldap_group_name_attribute: str = setting("cn", text())
    ldap_timeout_seconds: float = setting(5, number(0, 120, above=True))
    # CAS 2.0/3.0 (python-cas): the server's base URL, e.g. https://cas.example.edu/cas/
    cas_server_url: str | None = setting(None, text(optional=True))
    cas_version: int = setting(3, choice(2, 3))
    cas_name_attribute: str = setting("displayName", text())
    cas_groups_attribute: str = setting("groups", text())
    # OIDC (Authlib): authorization code flow with PKCE against the issuer's discovery document.
    oidc_issuer: str | None = setting(None, text(optional=True))
    oidc_client_id: str | None = setting(None, text(optional=True))
    oidc_client_secret: str | bytes | None = setting(None, secret(), repr=False)
    oidc_scopes: str = setting("openid profile", text())
    oidc_uid_claim: str = setting("preferred_username", text())
    oidc_name_claim: str = setting("name", text())
    oidc_groups_claim: str = setting("groups", text())

    # -- caches -----------------------------------------------------------------------------
    # Hot-file cache in Redis (portal/cache/hot.py): pays for remote origins such as S3; a local
    # origin keeps zero-copy sendfile unless CACHE_HOT_LOCAL is true.
    cache_hot_enabled: bool = setting(True, flag())
    cache_hot_local: bool = setting(False, flag())
    cache_hot_max_file_bytes: int = setting(32 * 1024**2, whole(0))  # admission: files this small
    # admission: requests this hour and the last, this one included
    cache_hot_min_hits: int = setting(2, whole(0))
    cache_hot_budget_bytes: int = setting(512 * 1024**2, whole(0))  # LRU eviction above this
    # Each worker's own copies of the hottest contents (cache.HotMemory), in front of Redis:
    # budget per worker (None: 64 MiB, or 0 = off under TESTING) and largest file.
    cache_hot_memory_bytes: int | None = setting(None, whole(0, optional=True))
    cache_hot_memory_max_file_bytes: int = setting(8 * 1024**2, whole(0))
    cache_metadata: bool = setting(True, flag())  # download metadata (access, newest version)
    # How long Redis keeps an entry; staleness is bounded by coherence.py, not by this.
    cache_meta_ttl_seconds: int = setting(300, whole(0))
    cache_users: bool = setting(True, flag())  # the user loader's snapshot (invalidated on change)
    # Each worker's own copies of those two, kept coherent by Redis pub/sub (cache.LocalCopies):
    # the longest a copy is used. 0 switches them off; None: 5, or 0 under TESTING.
    cache_local_seconds: float | None = setting(None, number(optional=True))
    # Warm downloads answered in front of Flask from those copies (portal/download/fast.py).
    fast_downloads: bool = setting(True, flag())
    # The longest a worker trusts its cached decisions without confirming them against the
    # database's change log (portal/coherence.py): a revoked right, access rule, disabled
    # user or ended session stops working within this long, whatever Redis does.
    coherence_seconds: float = setting(0.5, number(0, 1.5, above=True))

    # -- analytics (portal/analytics/, docs/analytics.md) -----------------------------------
    # a pause longer than this starts a new logical download
    analytics_idle_minutes: float = setting(30, number(0, above=True))
    # ranged requests for at most this many bytes are probes
    analytics_probe_max_bytes: int = setting(2, whole(0))
    analytics_min_bytes: int = setting(1, whole(0))  # delivered bytes that make a download count
    # coverage that makes a download "completed"
    analytics_complete_ratio: float = setting(0.99, number(0, 1, above=True))
    analytics_flush_seconds: float = setting(2.0, number(0, above=True))  # the flusher's period
    # stream length that wakes it early; rows per SQL batch
    analytics_flush_batch: int = setting(1000, whole(1))
    # None: on, except under TESTING
    analytics_background_flush: bool | None = setting(None, flag(optional=True))
    # Where the background flush to SQL runs: "workers" (a greenlet in each web worker) or
    # "process" (one `flask analytics flush --follow` beside them, started by gunicorn.conf.py,
    # which sets it: the SQL writes then never hold a worker's event loop).
    analytics_flusher: str = setting("workers", choice("workers", "process"))
    # Start records (local disk); None: instance/analytics-journal.
    analytics_journal_dir: str | None = setting(None, text(optional=True))
    # x-accel: nginx's event log (deploy/nginx.conf, portal_events.log) for the bytes it sent;
    # events wait this long for their line, then count their planned bytes. None: no waiting.
    analytics_nginx_log: str | None = setting(None, text(optional=True))
    analytics_nginx_wait_seconds: float = setting(600, number(0))
    # Who reads that log: "workers" (each web node's background flusher) or "external" (a
    # `flask analytics flush --follow` of its own on the node, e.g. at a lower CPU priority).
    analytics_nginx_import: str = setting("workers", choice("workers", "external"))
    # The share of the time the workers' import may take while it is behind (a peak): the
    # rest goes to serving, and the import catches up after the peak.
    analytics_nginx_import_share: float = setting(0.1, number(0, 1, above=True))
    analytics_retention_days: int = setting(90, whole(1))  # raw download events
    analytics_logical_retention_days: int = setting(730, whole(1))  # logical downloads
    # hourly rollups (daily ones are kept)
    analytics_hourly_retention_days: int = setting(400, whole(1))
    # local days, weekdays and hours of the pages
    analytics_timezone: str = setting("Asia/Shanghai", time_zone())
    # seasonal average over this many past weeks
    analytics_forecast_weeks: int = setting(4, whole(1, 26))

    # -- download limits (portal/download/limits.py, docs/limits.md) -------------------------
    # Per role or group: concurrent connections and bytes per second per person.
    download_limits: tuple = setting((), download_limits())
    # Admins change those limits on /admin/limits (stored in SQL, download/limit_store.py);
    # the environment's entries are the defaults. A key locked here keeps the environment's
    # value whatever SQL holds, and the page shows it locked with this reason.
    download_limits_locked: tuple = setting((), limit_locks())
    # Admission: the node's budget of active download connections (0: none); past it, new
    # downloads larger than ADMISSION_MIN_BYTES get 503 with Retry-After.
    download_admission_connections: int = setting(0, whole(0))
    download_admission_min_bytes: int = setting(1024**2, whole(0))
    # The Retry-After of a 429 (over a person's limit) or 503 (node saturated), in seconds.
    download_retry_after_seconds: int = setting(2, whole(1, 3600))
    # A worker's connection leases live this long unless it renews them (a killed worker's
    # connections stop counting after it).
    download_lease_seconds: int = setting(30, whole(3, 3600))

    # -- gunicorn (gunicorn.conf.py reads them with from_environ) ---------------------------
    bind: str = setting("127.0.0.1:5000", text())
    gunicorn_worker_class: str = setting("gevent", text())
    # One process per core (None): greenlets give the concurrency, processes give the CPU.
    gunicorn_workers: int | None = setting(None, whole(1, optional=True))
    gunicorn_connections: int = setting(2000, whole(1))
    gunicorn_accesslog: str | None = setting("-", text(optional=True, blank_is_none=True))
    # gunicorn's control socket; None (or empty): off.
    gunicorn_control_socket: str | None = setting(None, text(optional=True, blank_is_none=True))

    # -- observability (docs/observability.md) ------------------------------------------------
    # Who may read /metrics and the reasons of /healthz and /readyz: a client whose address is
    # in METRICS_ALLOW (not forwarded by a proxy the portal does not trust), or one that sends
    # "Authorization: Bearer METRICS_TOKEN". An empty list: the token alone.
    metrics_allow: tuple[str, ...] = setting(("127.0.0.0/8", "::1/128"), networks())
    metrics_token: str | bytes | None = setting(None, secret(), repr=False)
    # "text" (gunicorn's lines, as always) or "json": one JSON object a line for access and
    # application lines alike, each carrying the request's X-Request-ID.
    log_format: str = setting("text", choice("text", "json"))

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = spec.metadata["check"](f"PORTAL_{spec.name.upper()}", getattr(self, spec.name))
            object.__setattr__(self, spec.name, value)
        resolved = {
            "cache_hot_memory_bytes": 0 if self.testing else 64 * 1024**2,
            "cache_local_seconds": 0.0 if self.testing else 5.0,
            "session_cookie_secure": self.env == "production",
            "remember_cookie_secure": self.env == "production",
            "analytics_background_flush": not self.testing,
            "gunicorn_workers": os.cpu_count() or 1,
        }
        for name, value in resolved.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        needed = {"ldap": ("ldap_url", "ldap_user_base"), "cas": ("cas_server_url",),
                  "oidc": ("oidc_issuer", "oidc_client_id")}
        for method in self.auth_methods:
            missing = [f"PORTAL_{n.upper()}" for n in needed.get(method, ())
                       if not getattr(self, n)]
            if missing:
                raise ConfigError(f"PORTAL_AUTH_METHODS lists {method!r}, which needs "
                                  f"{' and '.join(missing)}")
        returning = [m for m in self.auth_methods if m in ("cas", "oidc")]
        if self.env == "production" and returning and self.public_url is None:
            raise ConfigError(f"PORTAL_AUTH_METHODS lists {returning[0]!r}, which needs "
                              "PORTAL_PUBLIC_URL in production (such as https://files.example."
                              "edu): the address sign-in returns to is never taken from the "
                              "request's Host header")
        if self.s3_delivery == "redirect" and not str(self.storage_url).startswith("s3://"):
            raise ConfigError("PORTAL_S3_DELIVERY=redirect needs an s3:// PORTAL_STORAGE_URL")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Settings":
        """The settings in ``config`` (app.config, or the environment's), the rest defaults."""
        return cls(**{name: config[key] for name, key in KEYS.items() if key in config})


def environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The PORTAL_ variables as ``app.config.from_prefixed_env("PORTAL")`` reads them: the
    prefix dropped, the value JSON where it parses, else the text (nested ``__`` keys, which
    no setting uses, are left out)."""
    import json

    found = {}
    for key, value in (os.environ if environ is None else environ).items():
        name = key.removeprefix("PORTAL_")
        if name == key or "__" in name:
            continue
        try:
            found[name] = json.loads(value)
        except ValueError:
            found[name] = value
    return found


def from_environ(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings the PORTAL_ environment gives, without building the app (gunicorn.conf.py).

    What needs the app is checked only by create_app: the database URL, the sign-in limits,
    the storage, the secret key in production."""
    return Settings.from_config(environment(environ))


#: Each field's app.config key.
KEYS = {spec.name: spec.name.upper() for spec in fields(Settings)}

#: The default of every setting, by app.config key (create_app loads it before the environment).
DEFAULTS = {key: Settings.__dataclass_fields__[name].default for name, key in KEYS.items()}
