"""The one place that reads the environment.

Every setting is read with ``app.config.from_prefixed_env("PORTAL")``, so ``PORTAL_X``
becomes ``app.config["X"]``. ``finalize`` turns the raw values into what the extensions
need and refuses a configuration that cannot work, with a message instead of a traceback.
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULTS = {
    "ENV": "development",  # "production" requires PORTAL_SECRET_KEY
    "SECRET_KEY": None,
    "DATABASE_URL": None,
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "STORAGE_URL": None,
    "SENDFILE": "direct",  # or "x-accel"
    "X_ACCEL_PREFIX": "/_protected",
    # How long nginx may reuse the portal's grant for a download (deploy/nginx.conf,
    # portal/download/fast.py): a revocation can take this long to reach nginx. 0: ask each time.
    "NGINX_GRANT_SECONDS": 1,
    # S3 downloads: "proxy" (the portal streams the bytes) or "redirect" (302 to a presigned
    # URL valid this many seconds, after the portal has authorised and evaluated the request).
    "S3_DELIVERY": "proxy",
    "S3_PRESIGN_SECONDS": 300,
    "LINK_TTL_SECONDS": 24 * 3600,
    "MAX_UPLOAD_BYTES": 8 * 1024**3,
    "DEMO_BIG_FILE_MB": 100,
    # The session and remember-me cookies: never readable by scripts, not sent on cross-site
    # subrequests or POSTs, and HTTPS-only in production. These keys override Flask's and
    # Flask-Login's own defaults (which are not HttpOnly-and-Lax everywhere, never Secure);
    # None for SECURE means "true when ENV is production", so an operator's explicit
    # PORTAL_SESSION_COOKIE_SECURE=false (a TLS-less test bed) still wins.
    "SESSION_COOKIE_SECURE": None,
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Lax",
    "REMEMBER_COOKIE_SECURE": None,
    "REMEMBER_COOKIE_HTTPONLY": True,
    "REMEMBER_COOKIE_SAMESITE": "Lax",
    "BABEL_DEFAULT_LOCALE": "zh_CN",
    "LANGUAGES": ["zh_CN", "en"],
    "PER_PAGE": 20,
    # Failed sign-ins (Flask-Limiter syntax; portal/auth/throttle.py): per account name and
    # client address, and per address (generous: a campus NATs many students) -- past those
    # the address is refused (429); per account over all addresses, the ceiling -- past it
    # attempts are delayed, never refused, so a stranger cannot lock the owner out.
    "LOGIN_LIMIT_ACCOUNT": "5 per minute;20 per hour",
    "LOGIN_LIMIT_IP": "100 per minute",
    "LOGIN_LIMIT_ACCOUNT_CEILING": "50 per hour",
    # How many proxies in front of the portal set X-Forwarded-For / -Proto (deploy/nginx.conf
    # is one). 0: the peer's address is the client's and those headers are not believed.
    "TRUSTED_PROXIES": 0,
    # Hot-file cache in Redis (portal/cache/hot.py): pays for remote origins such as S3; a local
    # origin keeps zero-copy sendfile unless CACHE_HOT_LOCAL is true.
    "CACHE_HOT_ENABLED": True,
    "CACHE_HOT_LOCAL": False,
    "CACHE_HOT_MAX_FILE_BYTES": 32 * 1024**2,  # admission: only files this small
    "CACHE_HOT_MIN_HITS": 2,  # admission: requests this hour and the last, this one included
    "CACHE_HOT_BUDGET_BYTES": 512 * 1024**2,  # LRU eviction above this many cached bytes
    # Each worker's own copies of the hottest contents (cache.HotMemory), in front of Redis:
    # budget per worker (unset means 64 MiB, or 0 = off under TESTING) and largest file.
    "CACHE_HOT_MEMORY_BYTES": None,
    "CACHE_HOT_MEMORY_MAX_FILE_BYTES": 8 * 1024**2,
    "CACHE_METADATA": True,  # download metadata (access, newest version) in Redis
    "CACHE_META_TTL_SECONDS": 300,
    "CACHE_USERS": True,  # the user loader's snapshot in Redis (invalidated on every change)
    # Each worker's own copies of those two, kept coherent by Redis pub/sub (cache.LocalCopies):
    # the longest a copy is used. 0 switches them off; unset means 5, or 0 under TESTING.
    "CACHE_LOCAL_SECONDS": None,
    # Warm downloads answered in front of Flask from those copies (portal/download/fast.py).
    "FAST_DOWNLOADS": True,
    # The longest a worker trusts its cached decisions without confirming them against the
    # database's change log (portal/coherence.py): a revoked right, access rule, disabled
    # user or ended session stops working within this long, whatever Redis does.
    "COHERENCE_SECONDS": 0.5,
    # A session and its remember-me cookie end this long after sign-in (tokens.py).
    "SESSION_LIFETIME_SECONDS": 14 * 24 * 3600,
}


class ConfigError(Exception):
    """A setting that stops the portal from starting; the message says which and why."""


def finalize(config: dict, instance_path: str) -> None:
    """Derive the extension settings from the PORTAL_ values, or raise ConfigError."""
    instance = Path(instance_path)
    try:
        instance.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the instance folder {instance}: {exc.strerror}") from exc

    config["SECRET_KEY"] = config.get("SECRET_KEY") or _instance_secret(config, instance)
    config["SQLALCHEMY_DATABASE_URI"] = _database_url(config.get("DATABASE_URL"), instance)
    config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True}
    config["STORAGE_URL"] = config.get("STORAGE_URL") or (instance / "storage").as_uri()
    if config["SENDFILE"] not in ("direct", "x-accel"):
        raise ConfigError(
            f"PORTAL_SENDFILE must be 'direct' or 'x-accel', not {config['SENDFILE']!r}")
    _check_s3_delivery(config)
    memory = config.get("CACHE_HOT_MEMORY_BYTES")
    if memory is None:
        config["CACHE_HOT_MEMORY_BYTES"] = 0 if config.get("TESTING") else 64 * 1024**2
    elif isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
        raise ConfigError(f"PORTAL_CACHE_HOT_MEMORY_BYTES must be a whole number >= 0, "
                          f"not {memory!r}")
    local = config.get("CACHE_LOCAL_SECONDS")
    if local is None:
        config["CACHE_LOCAL_SECONDS"] = 0 if config.get("TESTING") else 5
    elif isinstance(local, bool) or not isinstance(local, int | float) or local < 0:
        raise ConfigError(f"PORTAL_CACHE_LOCAL_SECONDS must be a number >= 0, not {local!r}")
    grant = config["NGINX_GRANT_SECONDS"]
    if isinstance(grant, bool) or not isinstance(grant, int) or not 0 <= grant <= 3600:
        raise ConfigError(f"PORTAL_NGINX_GRANT_SECONDS must be a whole number from 0 to 3600, "
                          f"not {grant!r}")
    if config["FAST_DOWNLOADS"] not in (True, False):  # JSON true/false, or 1/0
        raise ConfigError(f"PORTAL_FAST_DOWNLOADS must be true or false, "
                          f"not {config['FAST_DOWNLOADS']!r}")
    proxies = config["TRUSTED_PROXIES"]
    if isinstance(proxies, bool) or not isinstance(proxies, int) or proxies < 0:
        raise ConfigError(f"PORTAL_TRUSTED_PROXIES must be a whole number >= 0 (the proxies "
                          f"in front of the portal), not {proxies!r}")
    _check_login_limits(config)
    for name, high in (("COHERENCE_SECONDS", 1.5), ("SESSION_LIFETIME_SECONDS", 366 * 86400)):
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= high:
            raise ConfigError(f"PORTAL_{name} must be a number above 0 and at most {high}, "
                              f"not {value!r}")
    lifetime = timedelta(seconds=config["SESSION_LIFETIME_SECONDS"])
    flask_limit = config.get("PERMANENT_SESSION_LIFETIME", lifetime)
    if not isinstance(flask_limit, timedelta):
        flask_limit = timedelta(seconds=flask_limit)
    # Flask's own age limit of the signed cookie: never longer than a session lives
    config["PERMANENT_SESSION_LIFETIME"] = min(flask_limit, lifetime)
    config["REMEMBER_COOKIE_DURATION"] = lifetime
    config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # tied to the session, not to a clock
    _cookie_flags(config)


def _cookie_flags(config: dict) -> None:
    """The session and remember-me cookie flags (DEFAULTS): Secure follows ENV unless set, and
    each flag must be a boolean, SameSite Lax, Strict, None or unset; else ConfigError."""
    production = config["ENV"] == "production"
    for prefix in ("SESSION_COOKIE_", "REMEMBER_COOKIE_"):
        if config.get(prefix + "SECURE") is None:
            config[prefix + "SECURE"] = production
        for flag in ("SECURE", "HTTPONLY"):
            if config[prefix + flag] not in (True, False):  # JSON true/false, or 1/0
                raise ConfigError(f"PORTAL_{prefix}{flag} must be true or false, "
                                  f"not {config[prefix + flag]!r}")
        if config[prefix + "SAMESITE"] not in ("Lax", "Strict", "None", None):
            raise ConfigError(f"PORTAL_{prefix}SAMESITE must be Lax, Strict or None, "
                              f"not {config[prefix + 'SAMESITE']!r}")


#: SigV4 presigned URLs live at most seven days.
PRESIGN_MAX_SECONDS = 7 * 24 * 3600


def _check_s3_delivery(config: dict) -> None:
    """PORTAL_S3_DELIVERY and PORTAL_S3_PRESIGN_SECONDS, or ConfigError."""
    if config["S3_DELIVERY"] not in ("proxy", "redirect"):
        raise ConfigError("PORTAL_S3_DELIVERY must be 'proxy' or 'redirect', "
                          f"not {config['S3_DELIVERY']!r}")
    seconds = config["S3_PRESIGN_SECONDS"]
    if (isinstance(seconds, bool) or not isinstance(seconds, int)
            or not 1 <= seconds <= PRESIGN_MAX_SECONDS):
        raise ConfigError("PORTAL_S3_PRESIGN_SECONDS must be a whole number of seconds from 1 "
                          f"to {PRESIGN_MAX_SECONDS}, not {seconds!r}")
    if config["S3_DELIVERY"] == "redirect" and not str(config["STORAGE_URL"]).startswith("s3://"):
        raise ConfigError("PORTAL_S3_DELIVERY=redirect needs an s3:// PORTAL_STORAGE_URL")


def _check_login_limits(config: dict) -> None:
    """The sign-in limits parse (Flask-Limiter syntax, each allowing 1 or more), or ConfigError."""
    from .auth.throttle import check_setting  # the one parser of these settings

    for name in ("LOGIN_LIMIT_ACCOUNT", "LOGIN_LIMIT_IP", "LOGIN_LIMIT_ACCOUNT_CEILING"):
        problem = check_setting(config[name])
        if problem:
            raise ConfigError(f"PORTAL_{name}: {problem}")


def _instance_secret(config: dict, instance: Path) -> str:
    """A random key kept in instance/ so that sessions survive restarts of the embedded default."""
    if config["ENV"] == "production":
        raise ConfigError("PORTAL_SECRET_KEY is required when PORTAL_ENV=production")
    path = instance / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip()


def _database_url(url: str | None, instance: Path) -> str:
    if not url:
        return f"sqlite:///{instance / 'portal.db'}"
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigError(f"PORTAL_DATABASE_URL is not a usable SQLAlchemy URL: {exc}") from exc
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError("PORTAL_DATABASE_URL must be sqlite:/// or postgresql+psycopg://")
    return url
