"""The campus file-download portal."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flask import Flask, request, session

from . import cache, logs, observe, security
from .coherence import Coherence
from .config import DEFAULTS, PROJECT_ROOT, ConfigError, SettingsConfig, finalize, settings
from .extensions import SessionInterface, babel, csrf, db, limiter, login_manager, migrate
from .storage import StorageError, storage_from_url

__all__ = ["ConfigError", "bundled", "create_app"]

log = logging.getLogger(__name__)


def bundled(name: str) -> Path:
    """A folder or file the repository keeps at its top level (templates/, static/,
    migrations/, gunicorn.conf.py): inside the package when installed from a wheel (setup.py
    puts it there), beside the package in a checkout or an editable install."""
    inside = Path(__file__).resolve().parent / name
    return inside if inside.exists() else PROJECT_ROOT / name


class Portal(Flask):
    """Flask, with an app.config that keeps the app's Settings in step (SettingsConfig)."""

    config_class = SettingsConfig


def create_app(config: dict | None = None) -> Flask:
    """Build the app: read configuration, bind extensions and blueprints. Writes nothing."""
    instance = os.environ.get("PORTAL_INSTANCE_PATH") or str(PROJECT_ROOT / "instance")
    if config and "INSTANCE_PATH" in config:
        instance = config["INSTANCE_PATH"]
    app = Portal(
        __name__,
        instance_path=instance,
        template_folder=str(bundled("templates")),
        static_folder=str(bundled("static")),
    )
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("PORTAL")
    if config:
        app.config.from_mapping(config)
    finalize(app)
    logs.configure(settings(app).log_format)  # PORTAL_LOG_FORMAT=json: JSON lines

    register_extensions(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_commands(app)

    from . import assets

    assets.register(app)  # /static/: hashed URLs, long-lived caching, precompressed bodies
    from .download.fast import FastDownloads

    app.wsgi_app = FastDownloads(app, app.wsgi_app)
    observe.register(app)  # counts and times every door's requests (portal/observe.py)
    trust_proxies(app)  # last: the outermost wrapper
    return app


def trust_proxies(app: Flask) -> None:
    """Behind PORTAL_TRUSTED_PROXIES proxies, take the client's address and scheme from the
    X-Forwarded-For / X-Forwarded-Proto values those proxies appended (Werkzeug's ProxyFix).

    It wraps everything else, the fast path included, so that every door (FastDownloads'
    analytics, request.remote_addr for the audit log, sign-in limits and analytics) sees the
    same client. x_for and x_proto only: deploy/nginx.conf sets those two and passes the
    client's own Host through untouched, so an X-Forwarded-Host (or -Port, -Prefix) reaching
    the portal can only come from the client and must not be believed (it would choose the
    host of the signed links the portal hands out). ProxyFix keeps the X-Forwarded-For header
    as it came, so Flask-Login's session identifier, which reads that header, is computed
    from the same value as without it.
    """
    proxies = settings(app).trusted_proxies
    if proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=0,
                                x_port=0, x_prefix=0)


def register_extensions(app: Flask) -> None:
    """Bind the unbound extensions, the storage backend and the Redis client."""
    s = settings(app)
    app.session_interface = SessionInterface()
    security.register(app)  # the id converter (before any blueprint) and the page headers
    db.init_app(app)
    migrate.init_app(app, db, directory=str(bundled("migrations")))
    login_manager.init_app(app)  # SESSION_PROTECTION: settings.py
    csrf.init_app(app)
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    app.before_request(protect_from_csrf)
    babel.init_app(app, locale_selector=select_locale,
                   default_translation_directories=str(PROJECT_ROOT / "portal" / "translations"))
    app.config.setdefault("RATELIMIT_STORAGE_URI", s.redis_url)
    app.config.setdefault("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", True)
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    limiter.init_app(app)
    skip_limiter_hook(app, "download")
    app.extensions["portal_redis"] = cache.make_client(s.redis_url)
    app.extensions["portal_coherence"] = Coherence(
        app, s.coherence_seconds, on_change=lambda subjects: cache.forget_locally(app, subjects))
    if s.cache_hot_memory_bytes and s.cache_hot_enabled:
        app.extensions["portal_hot_memory"] = cache.HotMemory(
            app, s.cache_hot_memory_bytes, s.cache_hot_memory_max_file_bytes)
    if s.cache_local_seconds and s.cache_metadata:
        app.extensions["portal_local_copies"] = cache.LocalCopies(app, s.cache_local_seconds)
    cache.watch_file_changes()
    try:
        storage = storage_from_url(s.storage_url)
        storage.check()
    except StorageError as exc:
        raise ConfigError(f"PORTAL_STORAGE_URL={s.storage_url}: {exc}") from exc
    app.extensions["portal_storage"] = storage

    from .catalog.service import human_size

    app.jinja_env.globals["format_size"] = human_size  # macros imported without context see it
    from .timeshown import local_time

    app.jinja_env.filters["local_time"] = lambda value, fmt="%Y-%m-%d %H:%M": local_time(
        value, settings(app).analytics_timezone, fmt)
    app.jinja_env.globals["time_zone"] = lambda: settings(app).analytics_timezone

    @app.context_processor
    def inject_locale():
        from flask_babel import get_locale

        # Babel spells zh_CN as zh_Hans_CN (hence the catalog folder's name); pages use zh_CN.
        locale = get_locale()
        code = "zh_CN" if locale is not None and locale.language == "zh" else "en"
        return {"current_locale": code, "languages": settings(app).languages}


def skip_limiter_hook(app: Flask, blueprint: str) -> None:
    """Run Flask-Limiter's before_request check for every blueprint but this one.

    The portal sets no default or application-wide limits: only the sign-in views are
    limited, and their decorators check their own limits. The hook Flask-Limiter adds would
    still resolve (no) limits on every download: about 6 % of a signed-in download's time
    (py-spy, bench/run_download_bench.py). limiter.exempt() does not skip that work.
    """
    hooks = app.before_request_funcs.setdefault(None, [])
    check = limiter._check_request_limit
    if check not in hooks:
        return

    def check_unless_skipped() -> None:
        if request.blueprint != blueprint:
            check()

    hooks[hooks.index(check)] = check_unless_skipped


def protect_from_csrf() -> None:
    """CSRF on every form POST, and on API calls that carry a session cookie.

    An API call without the cookie has no ambient authority to abuse (tus uploads and
    scripts authenticate otherwise), so it is answered by the view: 401 JSON as the README
    says, not a CSRF 400. Forms are always checked, which also stops login CSRF.
    """
    from flask import current_app

    from .auth.sso_views import CSRF_EXEMPT

    if request.method in ("GET", "HEAD", "OPTIONS", "TRACE") or request.endpoint in CSRF_EXEMPT:
        return
    has_session = current_app.config["SESSION_COOKIE_NAME"] in request.cookies
    if request.path.startswith("/api/") and not has_session:
        return
    csrf.protect()


def select_locale() -> str:
    """A language chosen with the switch (kept in the session), else Accept-Language, else zh_CN."""
    languages = settings().languages
    chosen = session.get("lang")
    if chosen in languages:
        return chosen
    return request.accept_languages.best_match(languages) or settings().babel_default_locale


def register_blueprints(app: Flask) -> None:
    """Attach every blueprint."""
    from .admin import bp as admin_bp
    from .analytics import init_app as init_analytics
    from .auth import bp as auth_bp
    from .catalog import bp as catalog_bp
    from .download import bp as download_bp
    from .health import bp as health_bp
    from .metrics import bp as metrics_bp
    from .uploads import bp as uploads_bp

    app.register_blueprint(auth_bp)
    app.register_blueprint(catalog_bp)
    app.register_blueprint(download_bp)
    app.register_blueprint(health_bp)
    app.register_blueprint(metrics_bp)
    app.register_blueprint(admin_bp)
    init_analytics(app)  # /admin/analytics pages, /api/analytics, `flask analytics`
    app.register_blueprint(uploads_bp)


def register_errorhandlers(app: Flask) -> None:
    """Bilingual error pages, JSON for API calls."""
    from .errors import register

    register(app)


def register_commands(app: Flask) -> None:
    """The user / file / demo commands (db comes from Flask-Migrate)."""
    from .cli import register

    register(app)
