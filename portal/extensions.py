"""Flask extensions, created unbound and bound in create_app."""

import sqlite3

from flask.sessions import SecureCookieSessionInterface
from flask_babel import Babel
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase

# Named constraints so that Alembic can alter them on SQLite (batch mode) and PostgreSQL alike.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
class PortalLoginManager(LoginManager):
    """Flask-Login, with its "basic" session protection left out of downloads.

    "basic" marks a session non-fresh when another client (address or User-Agent) presents
    it, which writes the cookie again. A download manager reusing a browser's session (the
    copyable link, aria2c with the cookie) is another client on every request: each answer
    carried Set-Cookie and went past the fast path, for a flag that downloads never read
    (no view asks for a fresh login to download). So downloads take the session as it is;
    pages keep "basic", and "strong" (PORTAL_SESSION_PROTECTION) still ends a session that
    another client presents, on downloads too. What really ends a session is the server's
    revocation (portal/auth/tokens.py)."""

    def _session_protection_failed(self):
        from flask import request

        from .config import settings

        mode = settings().session_protection
        if mode == "basic" and request.blueprint == "download":
            return False
        return super()._session_protection_failed()


login_manager = PortalLoginManager()
csrf = CSRFProtect()
babel = Babel()
limiter = Limiter(key_func=get_remote_address)


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the signing serializer built once per key.

    Flask builds a new serializer for every request, and itsdangerous' constructor serialises
    an empty dict to learn whether the serializer returns text: about 3 % of a signed-in
    download's time (py-spy, bench/run_download_bench.py). Same cookies, same keys.
    """

    def get_signing_serializer(self, app):
        key = (app.secret_key, tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        cached = app.extensions.get("portal_session_serializer")
        if cached is None or cached[0] != key:
            cached = (key, super().get_signing_serializer(app))
            app.extensions["portal_session_serializer"] = cached
        return cached[1]


@event.listens_for(Engine, "connect")
def _tune_sqlite(dbapi_connection, _record) -> None:
    """SQLite for the embedded default: WAL lets readers run while a download is recorded,
    synchronous=NORMAL is durable across application crashes (not power loss) and costs one
    fsync per checkpoint instead of per commit, busy_timeout waits instead of failing when two
    workers write at once. Measured in bench/run_download_bench.py: 2.3x download req/s."""
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def migration_include_object(obj, name, type_, reflected, compare_to) -> bool:
    """Alembic's filter: leave out what migrations make by hand and the models do not declare,
    the trigram search indexes of migration 0005 (PostgreSQL only)."""
    return not (type_ == "index" and name and name.endswith("_trgm"))
