"""Real servers for the functional tests: a portal instance on disk, gunicorn, nginx, and a
private PostgreSQL cluster that a fault test may stop and restart.

Everything here runs the portal the way production does -- ``flask --app wsgi`` commands in a
subprocess, ``gunicorn -c gunicorn.conf.py wsgi:app`` with its gevent workers and the zero-copy
sendfile patch, nginx in front for ``PORTAL_SENDFILE=x-accel`` -- so that the real clients
(curl, wget, aria2c) talk to real sockets. Every process started here is stopped again, also
when a test fails.

The fixtures ``portal_instance`` and ``portal_server`` are module scoped: one instance and one
gunicorn per test module. tests/functional/conftest.py re-exports them.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.cookiejar
import json
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from bench.nginx_conf import DEPLOY_CONF, render_deploy_conf
from tests.helpers import (
    DEADLINE,
    csrf_from,
    free_port,
    package_missing,
    redis_binary,
    require_tool,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv running pytest: its flask and gunicorn
PASSWORD = "functional-pass-1"


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_random(path: Path, size: int) -> bytes:
    """Write ``size`` random bytes to ``path`` (creating its folder) and return them."""
    data = os.urandom(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Signal a process we started, wait for it, and kill it if it does not go."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def tail(path: Path, lines: int = 40) -> str:
    """The end of a log file, for failure messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------
# A portal instance on disk
# ---------------------------------------------------------------------------


@dataclass
class Instance:
    """A portal set up in a temporary folder: SQLite database, file:// storage, Redis."""

    root: Path
    env: dict[str, str]
    db_path: Path
    storage: Path

    def flask(self, *args: str, **extra_env: str) -> str:
        """Run ``flask --app wsgi ARGS`` in the project; return stdout, fail on exit != 0."""
        flask = BIN / "flask"
        cmd = [str(flask)] if flask.exists() else [sys.executable, "-m", "flask"]
        result = subprocess.run([*cmd, "--app", "wsgi", *args], cwd=ROOT,
                                env={**self.env, **extra_env}, capture_output=True,
                                text=True, timeout=120, check=False)
        if result.returncode != 0:
            pytest.fail(f"flask {' '.join(args)} exited {result.returncode}:\n"
                        f"{result.stdout}\n{result.stderr}")
        return result.stdout

    def node_app(self, redis_url: str, **settings: object):
        """Another node's app on this instance's database and storage, with its own Redis
        URL (an unreachable one stands for a node that cannot reach Redis when it commits:
        only the database's change log then tells the other nodes) and ``settings``."""
        from portal import create_app

        env = self.env
        return create_app({
            "DATABASE_URL": env["PORTAL_DATABASE_URL"], "STORAGE_URL": env["PORTAL_STORAGE_URL"],
            "REDIS_URL": redis_url, "RATELIMIT_STORAGE_URI": "memory://",
            "SECRET_KEY": env["PORTAL_SECRET_KEY"], "INSTANCE_PATH": env["PORTAL_INSTANCE_PATH"],
            "PASSWORD_HASH_METHOD": "scrypt:1024:8:1", "ANALYTICS_BACKGROUND_FLUSH": False,
            **settings,
        })

    def create_user(self, name: str, role: str = "student", password: str = PASSWORD) -> None:
        """``flask user create``."""
        self.flask("user", "create", name, "--password", password, "--role", role)

    def add_file(self, path: Path, *, title: str | None = None, category: str = "",
                 access: str = "public") -> int:
        """``flask file add``: the file's id (a known title and category add a version)."""
        args = ["file", "add", str(path), "--category", category, "--access", access]
        if title is not None:
            args += ["--title", title]
        out = self.flask(*args)
        return int(out.strip().splitlines()[-1].split("\t")[0])

    def events(self, **where: object) -> list[dict]:
        """DownloadEvent rows (optionally filtered by column equality), oldest first."""
        sql = "SELECT * FROM download_events"
        if where:
            sql += " WHERE " + " AND ".join(f"{column} = ?" for column in where)
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=10)) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute(sql + " ORDER BY id", tuple(where.values())).fetchall()
        return [dict(row) for row in rows]

    def wait_events(self, count: int = 1, timeout: float = DEADLINE, settle: float = 0.6,
                    **where: object) -> list[dict]:
        """Wait until at least ``count`` matching events are recorded and no more arrive for
        ``settle`` seconds. Events are written when the server closes the response body, a
        moment after the client goes away, and reach SQL in batches (portal/analytics)."""
        wait_for(lambda: len(self.events(**where)) >= count, timeout,
                 f"{count} download event(s) with {where}")
        rows = self.events(**where)
        while True:
            time.sleep(settle)
            again = self.events(**where)
            if len(again) == len(rows):
                return again
            rows = again


def make_instance(root: Path, redis_url: str, **env: str) -> Instance:
    """Create the folders, the environment and the schema (``flask db upgrade``).

    The Redis database is emptied first: the instances of earlier test modules used it with
    other databases, whose cached metadata and users (same ids) would answer for this one.
    """
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    root.mkdir(parents=True, exist_ok=True)
    db_path = root / "portal.db"
    storage = root / "storage"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "GUNICORN_"))}
    base.update({
        "PORTAL_INSTANCE_PATH": str(root / "instance"),
        "PORTAL_DATABASE_URL": f"sqlite:///{db_path}",
        "PORTAL_STORAGE_URL": storage.as_uri(),
        "PORTAL_REDIS_URL": redis_url,
        "PORTAL_SECRET_KEY": "functional-test-secret",
        # Download events reach SQL through a Redis buffer: flush it often for the tests.
        "PORTAL_ANALYTICS_FLUSH_SECONDS": "0.2",
        "PYTHONUNBUFFERED": "1",
        "PORTAL_PASSWORD_HASH_METHOD": "scrypt:1024:8:1",  # cheaper KDF for tests
        **env,
    })
    instance = Instance(root=root, env=base, db_path=db_path, storage=storage)
    instance.flask("db", "upgrade")
    return instance


# ---------------------------------------------------------------------------
# gunicorn
# ---------------------------------------------------------------------------


@dataclass
class Gunicorn:
    """A real ``gunicorn -c gunicorn.conf.py wsgi:app`` on a free loopback port."""

    instance: Instance
    workers: int = 2
    sendfile: str = "direct"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    env: dict = field(default_factory=dict)  # settings of this server only

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        """gunicorn's error and access log (stdout and stderr)."""
        return self.instance.root / f"gunicorn-{self.port}.log"

    def start(self) -> Gunicorn:
        """Start and wait until /healthz answers 200."""
        return self.launch().wait_ready()

    def launch(self) -> Gunicorn:
        """Start the process without waiting (to start several servers side by side)."""
        exe = BIN / "gunicorn"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gunicorn"]
        env = {**self.instance.env, "PORTAL_SENDFILE": self.sendfile,
               "PORTAL_GUNICORN_WORKERS": str(self.workers), **self.env}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{self.port}", "wsgi:app"],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        return self

    def wait_ready(self) -> Gunicorn:
        """Wait until /healthz answers 200; stop the process if it never does."""
        try:
            wait_for(self._healthy, what=f"gunicorn on {self.base_url}/healthz", interval=0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"gunicorn exited with {self.proc.returncode}:\n{tail(self.log)}")
        try:
            status, _, _ = request(self.base_url, "GET", "/healthz", timeout=2)
        except OSError:
            return False
        return status == 200

    def stop(self) -> None:
        """Quick shutdown (SIGINT: slow clients are not waited for)."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT, timeout=15)

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------

@dataclass
class Nginx:
    """A real nginx (foreground, its own prefix) in front of a gunicorn."""

    workdir: Path
    upstream: Gunicorn
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    static: Path | None = None  # built static assets (flask static build --to); None: none

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        """Write the portal's error pages, render the config, check it with ``nginx -t``,
        start, wait for /healthz."""
        exe = require_tool("nginx")
        for sub in ("logs", "temp", "cache"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        # The portal's pages for what nginx answers itself, as an install writes them.
        error_pages = self.workdir / "error-pages"
        if not error_pages.is_dir():
            self.upstream.instance.flask("error-pages", str(error_pages))
        conf = self.workdir / "nginx.conf"
        conf.write_text(render_deploy_conf(
            DEPLOY_CONF.read_text(), port=self.port, upstream_port=self.upstream.port,
            storage=self.upstream.instance.storage, pid=self.workdir / "nginx.pid",
            log_prefix=f"{self.workdir / 'logs'}/", cache_prefix=f"{self.workdir / 'cache'}/",
            temp_dir=self.workdir / "temp", error_pages=error_pages, static=self.static,
            # as root (CI) the workers run as root too, to read the test's private temp folders
            user="root" if os.geteuid() == 0 else None))
        base = [exe, "-p", str(self.workdir), "-c", str(conf),
                "-e", str(self.workdir / "logs" / "startup.log")]
        check = subprocess.run([*base, "-t"], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            pytest.fail(f"nginx -t rejected the rendered config:\n{check.stderr}")
        self.proc = subprocess.Popen([*base, "-g", "daemon off;"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(self._healthy, what=f"nginx on {self.base_url}")
        except BaseException:
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"nginx exited with {self.proc.returncode}:\n"
                        f"{tail(self.workdir / 'logs' / 'error.log')}")
        try:
            status, _, _ = request(self.base_url, "GET", "/healthz", timeout=2)
        except OSError:
            return False
        return status == 200

    def stop(self) -> None:
        """Fast shutdown (SIGTERM to the master)."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# chromium
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def launch_chromium(**options) -> Iterator[object]:
    """Debian's headless chromium driven by Playwright (no browser is downloaded), with
    --no-sandbox (the tests run as root) and no background networking; skipped when it is
    not installed, failed under CI. ``options`` go to ``chromium.launch``."""
    path = require_tool("chromium")
    browser = _playwright().chromium.launch(
        executable_path=path, headless=True,
        args=["--no-sandbox", "--disable-background-networking", "--disable-gpu",
              "--disable-component-update", "--disable-sync", "--no-first-run"],
        **options)
    try:
        yield browser
    finally:
        browser.close()


_PLAYWRIGHT: list = []


def _playwright():
    """The run's one Playwright driver: its sync API owns an event loop in this thread, so a
    second ``sync_playwright()`` while the first is open (the e2e session's browser and a
    functional module's) fails; every browser is launched from this one, stopped at exit."""
    if not _PLAYWRIGHT:
        import atexit

        from playwright.sync_api import sync_playwright

        _PLAYWRIGHT.append(sync_playwright().start())
        atexit.register(_PLAYWRIGHT[0].stop)
    return _PLAYWRIGHT[0]


# ---------------------------------------------------------------------------
# A private PostgreSQL cluster
# ---------------------------------------------------------------------------


def postgres_bindir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl`` (Debian keeps them out of PATH, under
    /usr/lib/postgresql/<version>/bin); skipped when PostgreSQL is not installed, failed
    under CI."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda path: int(path.parent.parent.name)
                   if path.parent.parent.name.isdigit() else 0)
    on_path = shutil.which("pg_ctl")
    if found:
        return found[-1].parent
    if on_path:
        return Path(on_path).parent
    package_missing("pg_ctlcluster", "initdb and pg_ctl are not installed; the PostgreSQL "
                    "fault tests need a private cluster")


@dataclass
class Postgres:
    """A PostgreSQL cluster of this test alone, in a temporary folder, on a free port.

    It can be stopped and restarted at will without touching the machine's own service,
    which other test runs share. PostgreSQL refuses to run as root, so under root (CI) every
    server command runs as the ``postgres`` OS user, in a folder that user owns (pytest's
    tmp folders are private to root). Authentication is ``trust``, on 127.0.0.1 only.
    """

    port: int = field(default_factory=free_port)
    bindir: Path = field(default_factory=postgres_bindir)
    workdir: Path | None = None

    @property
    def data(self) -> Path:
        """The cluster's data folder."""
        return self.workdir / "data"

    @property
    def log(self) -> Path:
        """The server's log (pg_ctl -l)."""
        return self.workdir / "postgres.log"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of its ``postgres`` database as the ``postgres`` role."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                check=False, cwd=self.workdir)
        if result.returncode != 0:
            pytest.fail(f"{tool} {' '.join(args)} exited {result.returncode}:\n"
                        f"{result.stdout}\n{result.stderr}\n{tail(self.log)}")
        return result

    def init(self) -> Postgres:
        """``initdb`` a fresh cluster (trust authentication, UTF-8)."""
        self.workdir = Path(tempfile.mkdtemp(prefix="portal-pg-"))
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.workdir)
                package_missing("pg_ctlcluster", "running as root without the postgres OS user "
                                "to run PostgreSQL as")
            os.chown(self.workdir, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        return self

    def _options(self) -> str:
        # fsync off: the cluster lives for one test and the machine does not crash under it;
        # restarts are clean shutdowns, which write everything anyway.
        return (f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
                f"-c fsync=off -c max_connections=100")

    def start(self) -> Postgres:
        """``pg_ctl start`` and wait until it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options(),
                  "-w", "-t", "30", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE`` (fast: open sessions are terminated, as a service stop
        does); nothing when it is not running."""
        if self.workdir is not None and (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def start_if_stopped(self) -> None:
        """Start the server again when a test stopped it and failed before starting it."""
        if not (self.data / "postmaster.pid").exists():
            self.start()

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m MODE``: what ``systemctl restart postgresql`` does."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options(),
                  "-m", mode, "-w", "-t", "30", "restart")

    def accepting(self) -> bool:
        """True when a connection can be opened now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
        except OSError:
            return False
        return subprocess.run([str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1",
                               "-p", str(self.port), "-t", "1"], check=False).returncode == 0

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of one statement (none for a command), on a connection of its own
        (psycopg, autocommit: CREATE DATABASE cannot run in a transaction)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                             dbname="postgres", autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description is not None else []

    def destroy(self) -> None:
        """Stop the server (immediately) and delete the cluster."""
        if self.workdir is None:
            return
        with contextlib.suppress(BaseException):
            self.stop("immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None

    def __enter__(self) -> Postgres:
        try:
            return self.init().start()
        except BaseException:
            self.destroy()
            raise

    def __exit__(self, *exc) -> None:
        self.destroy()


# ---------------------------------------------------------------------------
# HTTP without a client library
# ---------------------------------------------------------------------------


def dead_redis_url() -> str:
    """A Redis URL nothing listens at."""
    return f"redis://127.0.0.1:{free_port()}/0"


def request(base_url: str, method: str, path: str, headers: dict | None = None,
            timeout: float = 30, body: bytes | None = None
            ) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a fresh connection: (status, headers, body)."""
    parts = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, response.headers, body
    finally:
        conn.close()


def scrape(base_url: str, headers: dict | None = None) -> list:
    """GET /metrics and parse it with prometheus-client's own parser: every sample (name,
    labels, value) the portal exposes."""
    from prometheus_client.parser import text_string_to_metric_families

    status, _, body = request(base_url, "GET", "/metrics", headers=headers)
    assert status == 200, (status, body[:300])
    return [sample for family in text_string_to_metric_families(body.decode())
            for sample in family.samples]


def sample_total(samples: list, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(s.value for s in samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def worker_pids(server: Gunicorn) -> set[int]:
    """The pids of a gunicorn's workers now (its children that are gunicorn processes, not
    the analytics flusher)."""
    master = server.proc.pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    found = set()
    for child in children:
        with contextlib.suppress(FileNotFoundError):
            if b"gunicorn" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(int(child))
    return found


def raw_request(base_url: str, head: str, timeout: float = 10) -> bytes:
    """Send a hand-written request (``Connection: close`` is added) and return every byte the
    server sends until it closes: shows exactly what is on the wire (e.g. for HEAD)."""
    parts = urllib.parse.urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall((head.rstrip("\r\n") + "\r\nConnection: close\r\n\r\n").encode("latin-1"))
        data = bytearray()
        while chunk := sock.recv(1 << 16):
            data += chunk
    return bytes(data)


def parse_byteranges(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/byteranges body (RFC 9110 §14.6, RFC 2046 §5.1.1) strictly:
    [(part headers lower-cased, part bytes)]. Any framing error raises AssertionError."""
    kind, _, params = content_type.partition(";")
    assert kind.strip().lower() == "multipart/byteranges", content_type
    boundary = dict(p.strip().split("=", 1) for p in params.split(";") if "=" in p)["boundary"]
    delimiter = b"--" + boundary.strip('"').encode("ascii")
    if body.startswith(delimiter):
        rest = body[len(delimiter):]
    else:  # a preamble (nginx sends an empty line) ends with CRLF before the first delimiter
        start = body.index(b"\r\n" + delimiter)
        rest = body[start + 2 + len(delimiter):]
    parts = []
    while not rest.startswith(b"--"):
        assert rest.startswith(b"\r\n"), rest[:40]
        rest = rest[2:]
        end = rest.index(b"\r\n" + delimiter)
        part, rest = rest[:end], rest[end + 2 + len(delimiter):]
        head, separator, data = part.partition(b"\r\n\r\n")
        assert separator, part[:200]
        headers = {}
        for line in head.decode("ascii").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, data))
    assert rest in (b"--", b"--\r\n"), rest[:40]
    return parts


class Browser:
    """A signed-in user with a cookie jar (urllib), as a browser would be."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.csrf = ""

    def _open(self, path: str, data: bytes | None = None, headers: dict | None = None,
              method: str | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers or {},
                                     method=method)
        with self.opener.open(req, timeout=30) as response:
            return response.status, response.read()

    def page_csrf(self, path: str) -> str:
        """The token in the page's ``<meta name="csrf-token">``."""
        _, body = self._open(path)
        return csrf_from(body.decode())

    def login(self, username: str, password: str = PASSWORD) -> Browser:
        """GET /login for the token, POST the form; the session cookie lands in the jar."""
        token = self.page_csrf("/login")
        form = urllib.parse.urlencode({"username": username, "password": password,
                                       "csrf_token": token}).encode()
        self._open("/login", data=form)  # the redirect is followed to a page
        assert any(cookie.name == "session" for cookie in self.jar), "no session cookie"
        self.csrf = self.page_csrf("/")
        return self

    def mint_link(self, file_id: int, **payload: object) -> dict:
        """POST /api/files/<id>/links with X-CSRFToken: {url, expires_at, ...}."""
        status, body = self._open(f"/api/files/{file_id}/links", data=json.dumps(payload).encode(),
                                  headers={"X-CSRFToken": self.csrf,
                                           "Content-Type": "application/json"},
                                  method="POST")
        assert status == 201, body[:300]
        return json.loads(body)

    def revoke_link(self, url: str) -> dict:
        """POST /api/links/revoke {"url": ...} with X-CSRFToken."""
        status, body = self._open("/api/links/revoke", data=json.dumps({"url": url}).encode(),
                                  headers={"X-CSRFToken": self.csrf,
                                           "Content-Type": "application/json"},
                                  method="POST")
        assert status == 200, body[:300]
        return json.loads(body)

    def _tus(self, method: str, path: str, headers: dict, data: bytes | None = None
             ) -> http.client.HTTPMessage:
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers={
            "Tus-Resumable": "1.0.0", "X-CSRFToken": self.csrf, **headers})
        with self.opener.open(req, timeout=60) as response:
            response.read()
            return response.headers

    def tus_create(self, size: int, **metadata: str) -> str:
        """POST /api/uploads/ (tus creation): the new upload's path."""
        from portal.uploads.tus import format_metadata

        headers = self._tus("POST", "/api/uploads/", {
            "Upload-Length": str(size), "Upload-Metadata": format_metadata(metadata)}, b"")
        return urllib.parse.urlsplit(headers["Location"]).path

    def tus_offset(self, path: str) -> int:
        """HEAD: the offset the upload resumes from."""
        return int(self._tus("HEAD", path, {})["Upload-Offset"])

    def tus_send(self, path: str, offset: int, data: bytes) -> http.client.HTTPMessage:
        """PATCH ``data`` at ``offset``: the answer's headers (Upload-Offset, and once the
        upload is complete Upload-File-Id)."""
        return self._tus("PATCH", path, {"Upload-Offset": str(offset), "Content-Type":
                                         "application/offset+octet-stream"}, data)


# ---------------------------------------------------------------------------
# Fixtures (re-exported by tests/functional/conftest.py)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def portal_instance(tmp_path_factory, redis_url) -> Instance:
    """A fresh portal instance for one test module, with user ``alice`` (student)."""
    instance = make_instance(tmp_path_factory.mktemp("portal"), redis_url)
    instance.create_user("alice")
    return instance


@pytest.fixture(scope="module")
def portal_server(portal_instance) -> Iterator[Gunicorn]:
    """gunicorn serving ``portal_instance`` directly (PORTAL_SENDFILE=direct), 2 workers."""
    with Gunicorn(portal_instance) as server:
        yield server


# ---------------------------------------------------------------------------
# A private redis-server that tests stop, freeze, flush and restart
# ---------------------------------------------------------------------------


class PrivateRedis:
    """A ``redis-server`` of the test's own (no persistence), for fault tests: stop and
    restart it (empty), freeze it (SIGSTOP), flush it, drop its pub/sub connections."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A client that gives up quickly (the server may be frozen)."""
        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

    def start(self) -> PrivateRedis:
        """Start (again, on the same port: a restart comes back empty)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers() -> bool:
            try:
                return self.client().ping()
            except redis.RedisError:
                return False

        wait_for(answers, what=f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        """Kill it (what a crash or an OOM kill does: nothing is saved)."""
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
            self.proc.kill()
            self.proc.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after freeze."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def flush(self) -> None:
        """FLUSHALL."""
        self.client().flushall()

    def drop_subscribers(self) -> None:
        """Close every pub/sub connection (its messages in between are lost)."""
        self.client().client_kill_filter(_type="pubsub")

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
