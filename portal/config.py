"""The one place that reads the environment.

Every setting is read with ``app.config.from_prefixed_env("PORTAL")``, so ``PORTAL_X``
becomes ``app.config["X"]``. ``finalize`` turns the raw values into what the extensions
need and into the app's one :class:`~portal.settings.Settings` (``settings()``), and refuses a
configuration that cannot work, with a message instead of a traceback. The settings, their
defaults and their rules are declared in portal/settings.py.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Config, Flask, current_app
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from .settings import DEFAULTS, KEYS, ConfigError, Settings, from_environ

__all__ = ["DEFAULTS", "PROJECT_ROOT", "ConfigError", "Settings", "SettingsConfig", "finalize",
           "from_environ", "settings"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: The app.config keys that are settings.
SETTING_KEYS = frozenset(KEYS.values())


def settings(app: Flask | None = None) -> Settings:
    """The app's settings (current_app's when no app is given), as finalize built them."""
    return (current_app if app is None else app).extensions["portal_settings"]


def finalize(app: Flask) -> Settings:
    """Derive the extension settings from the PORTAL_ values and build the app's Settings
    (stored in app.extensions["portal_settings"]), or raise ConfigError."""
    config = app.config
    instance = Path(app.instance_path)
    try:
        instance.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the instance folder {instance}: {exc.strerror}") from exc

    config["SECRET_KEY"] = config.get("SECRET_KEY") or _instance_secret(config, instance)
    config["SQLALCHEMY_DATABASE_URI"] = _database_url(config.get("DATABASE_URL"), instance)
    config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True}
    config["STORAGE_URL"] = config.get("STORAGE_URL") or (instance / "storage").as_uri()
    built = _checked(config)
    for name, key in KEYS.items():  # what a None stood for (cookie flags: Flask reads them)
        if config.get(key) is None and getattr(built, name) is not None:
            config[key] = getattr(built, name)
    lifetime = timedelta(seconds=built.session_lifetime_seconds)
    flask_limit = config.get("PERMANENT_SESSION_LIFETIME", lifetime)
    if not isinstance(flask_limit, timedelta):
        flask_limit = timedelta(seconds=flask_limit)
    # Flask's own age limit of the signed cookie: never longer than a session lives
    config["PERMANENT_SESSION_LIFETIME"] = min(flask_limit, lifetime)
    config["REMEMBER_COOKIE_DURATION"] = lifetime
    config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # tied to the session, not to a clock
    app.extensions["portal_settings"] = built
    if isinstance(config, SettingsConfig):
        config.follow(app.extensions)
    return built


def _checked(config: Mapping[str, Any]) -> Settings:
    """The Settings of ``config``, with the checks that need the portal's parsers."""
    built = Settings.from_config(config)
    _check_login_limits(built)
    return built


class SettingsConfig(Config):
    """app.config, kept in step with the app's Settings once finalize has built them.

    Flask and its extensions read their own keys here, the portal reads its settings from
    Settings. A later write to a setting (a test turning the hot-file cache on in a running
    app) is checked as start-up checks it and replaces the app's Settings with new ones, so
    that the two never disagree; a refused value changes neither.
    """

    _home: dict | None = None  # app.extensions, once finalize has stored the Settings there

    def follow(self, home: dict) -> None:
        """From now on, keep home["portal_settings"] in step with this config."""
        self._home = home

    def _apply(self, write: Callable[[dict], Any], keys) -> Any:
        if self._home is None or SETTING_KEYS.isdisjoint(keys):
            return write(self)
        trial = dict(self)
        write(trial)
        built = _checked(trial)
        result = write(self)
        self._home["portal_settings"] = built
        return result

    def __setitem__(self, key: str, value: Any) -> None:
        self._apply(lambda config: dict.__setitem__(config, key, value), (key,))

    def __delitem__(self, key: str) -> None:
        self._apply(lambda config: dict.__delitem__(config, key), (key,))

    def update(self, *args: Any, **kwargs: Any) -> None:
        changes = dict(*args, **kwargs)
        self._apply(lambda config: dict.update(config, changes), changes)

    def __ior__(self, other: Any) -> SettingsConfig:
        self.update(other)
        return self

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, key: str, *default: Any) -> Any:
        return self._apply(lambda config: dict.pop(config, key, *default), (key,))


def _check_login_limits(built: Settings) -> None:
    """The sign-in limits parse (Flask-Limiter syntax, each allowing 1 or more), or ConfigError."""
    from .auth.throttle import check_setting  # the one parser of these settings

    for name in ("login_limit_account", "login_limit_ip", "login_limit_account_ceiling"):
        problem = check_setting(getattr(built, name))
        if problem:
            raise ConfigError(f"PORTAL_{name.upper()}: {problem}")


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
