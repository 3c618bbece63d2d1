"""Download benchmarks: the portal against baselines started in the same run.

    .venv/bin/python bench/run_download_bench.py              # full run (~5 min), writes
                                                              # docs/performance.md
    .venv/bin/python bench/run_download_bench.py --quick      # smoke run, prints only
    .venv/bin/python bench/run_download_bench.py --postgres   # PostgreSQL instead of SQLite

Everything runs on 127.0.0.1 and is started and stopped by this script: a temporary instance
(SQLite or a throw-away PostgreSQL database, file:// storage, a private redis-server), the
portal under the production ``gunicorn.conf.py``, a bare Flask ``send_file`` app under the
same config (bench/baseline_app.py), nginx serving the same storage folder, and the portal
in ``PORTAL_SENDFILE=x-accel`` mode behind nginx. Load comes from wrk (same parameters for
every target) and from bench/slow_clients.py. Every server is killed and the temporary
folder removed on exit, Ctrl-C or error.

Measured (targets in brackets):
  a. signed-in 64 KiB downloads, req/s, portal vs bare send_file         [>= 0.8x]
  b. 1 KiB Range of a 4 MiB file, req/s, portal vs bare send_file        [>= 0.8x]
  c. x-accel through nginx vs nginx serving the file itself              [>= 0.5x]
  d. GET /login latency while 1000 slow (20 KB/s) downloads run          [p99 < 100 ms]
     (also against a gthread 2x8 or sync portal, to show the worker choice)
  e. RSS growth of the workers while one client fetches a 5 GiB sparse file [< 50 MB]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import importlib.metadata
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
DOC = ROOT / "docs" / "performance.md"
ANALYSIS_START = "<!-- analysis:start (kept when the benchmark rewrites this file) -->"
ANALYSIS_END = "<!-- analysis:end -->"
USER, PASSWORD = "benchuser", "bench-password-1"
MIB = 1024 * 1024


class BenchError(Exception):
    """A step that cannot go on; the message says which and why."""


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A process this script started (in its own session) and how to stop it."""

    name: str
    proc: subprocess.Popen
    log: Path
    port: int | None = None
    stop_signal: int = signal.SIGTERM

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        """The end of its log, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Run:
    """The temporary folder and every process started; ``close`` undoes all of it."""

    def __init__(self, keep: bool = False) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="portal-bench-"))
        os.chmod(self.tmp, 0o755)  # nginx workers (user nobody) read the storage below it
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.servers: list[Server] = []
        self.cleanups: list = []
        self.keep = keep

    def spawn(self, name: str, argv: list[str], env: dict | None = None,
              stop_signal: int = signal.SIGTERM, port: int | None = None) -> Server:
        """Start a process in a new session, its output going to a log file."""
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
                                    start_new_session=True)
        server = Server(name, proc, log, port, stop_signal)
        self.servers.append(server)
        return server

    def stop(self, server: Server, grace: float = 10.0) -> None:
        """Stop the process group of one server we started: its signal, then SIGKILL."""
        if server.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, server.stop_signal)
            try:
                server.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait(5)
        # Workers left behind by a master that died first are in the same group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        if server in self.servers:
            self.servers.remove(server)

    def close(self) -> None:
        """Stop every server (newest first), run the clean-ups, remove the folder."""
        for server in reversed(list(self.servers)):
            try:
                self.stop(server)
            except Exception as exc:  # keep cleaning up
                print(f"bench: could not stop {server.name}: {exc}", file=sys.stderr)
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as exc:
                print(f"bench: clean-up failed: {exc}", file=sys.stderr)
        if self.keep:
            print(f"bench: kept {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def wait_http(server: Server, path: str = "/", timeout: float = 30.0) -> None:
    """Wait until the server answers HTTP on its port, or raise with its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise BenchError(f"{server.name} exited ({server.proc.returncode}):\n{server.tail()}")
        try:
            status, _, _ = fetch(server.port, path, timeout=2)
            if status < 500:
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    raise BenchError(f"{server.name} did not answer on port {server.port}:\n{server.tail()}")


def fetch(port: int, path: str, headers: dict | None = None, method: str = "GET",
          body: bytes | None = None, timeout: float = 10.0):
    """One request on a new connection: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def run_checked(argv: list, env: dict, what: str, timeout: float = 120) -> str:
    """Run a command to completion; its stdout, or BenchError with its output."""
    done = subprocess.run([str(a) for a in argv], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise BenchError(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


# ----------------------------------------------------------------------------- measurements

UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
SIZES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


@dataclass
class WrkResult:
    """What one wrk run reported."""

    target: str
    rps: float
    requests: int
    bytes_read: float
    p50_ms: float
    p99_ms: float
    errors: str = ""
    non_2xx: int = 0

    @property
    def bytes_per_request(self) -> float:
        """Mean response size on the wire, headers included."""
        return self.bytes_read / self.requests if self.requests else 0.0


def _duration(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")


def parse_wrk(target: str, out: str) -> WrkResult:
    """Requests/sec, latency percentiles, bytes, errors from wrk --latency output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)(B|KB|MB|GB|TB) read", out)
    requests, read = int(m.group(1)), float(m.group(2)) * SIZES[m.group(3)]
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Socket errors: (.*)", out)
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(target, rps, requests, read,
                     _duration(pct.get("50", "nan")) * 1e3, _duration(pct.get("99", "nan")) * 1e3,
                     errors.group(1) if errors else "", int(non.group(1)) if non else 0)


def wrk(args: argparse.Namespace, target: str, url: str, headers: dict) -> WrkResult:
    """A short warm-up, then the measured wrk run with the shared parameters."""
    hdr = [x for k, v in headers.items() for x in ("-H", f"{k}: {v}")]
    base = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "--latency", *hdr]
    subprocess.run([*base, "-d", f"{args.warmup}s", url], capture_output=True, check=False,
                   timeout=args.warmup + 30)
    done = subprocess.run([*base, "-d", f"{args.duration}s", url], capture_output=True,
                          text=True, check=False, timeout=args.duration + 60)
    if done.returncode != 0:
        raise BenchError(f"wrk failed for {target}: {done.stderr}")
    result = parse_wrk(target, done.stdout)
    print(f"  {target:<38} {result.rps:>10.0f} req/s  p50 {result.p50_ms:.2f} ms  "
          f"p99 {result.p99_ms:.2f} ms  {result.bytes_per_request:.0f} B/resp  "
          f"non-2xx {result.non_2xx}  {result.errors}", flush=True)
    return result


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); inf stands for a request that failed."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def probe_latency(port: int, path: str, count: int, gap: float, until: float,
                  timeout: float) -> list[float]:
    """Sequential requests, each on a new connection; seconds each, inf when it failed."""
    out: list[float] = []
    while len(out) < count and time.monotonic() < until:
        started = time.perf_counter()
        try:
            status, _, _ = fetch(port, path, timeout=timeout)
            ok = status == 200
        except (OSError, http.client.HTTPException):
            ok = False
        out.append(time.perf_counter() - started if ok else float("inf"))
        time.sleep(gap)
    return out


def children(pid: int) -> list[int]:
    """The pids whose parent is pid (gunicorn workers of a master)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


# ----------------------------------------------------------------------------- set-up


@dataclass
class Instance:
    """The temporary portal instance and what was put into it."""

    env: dict
    storage: Path
    small_key: str = ""
    small: bytes = b""
    big_key: str = ""
    big: bytes = b""
    ids: dict = field(default_factory=dict)
    sparse_key: str = ""
    sparse_size: int = 0
    database: str = "sqlite"


def base_env() -> dict:
    """This process's environment without any PORTAL_ or gunicorn settings of the caller."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PORTAL_", "GUNICORN_"))}


def object_path(storage: Path, key: str) -> Path:
    """Where LocalStorage keeps the content with this key."""
    return storage / "objects" / key[:2] / key[2:4] / key


def start_redis(run: Run) -> str:
    """A private redis-server without persistence, so no real Redis data is touched."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise BenchError("redis-server not found (or pass --redis-url)")
    port = free_port()
    server = run.spawn("redis", [exe, "--port", port, "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", run.tmp], port=port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.1)
    raise BenchError(f"redis-server did not start:\n{server.tail()}")


def postgres_database(run: Run, admin_url: str) -> str:
    """A new, empty PostgreSQL database for this run, dropped again by Run.close."""
    import psycopg

    name = f"portal_bench_{os.getpid()}_{int(time.time())}_{os.urandom(3).hex()}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    run.cleanups.append(drop)
    host = re.sub(r"^postgres(ql)?(\+\w+)?://", "", admin_url).rsplit("/", 1)[0]
    return f"postgresql+psycopg://{host}/{name}"


def zero_digests(size: int) -> tuple[str, int]:
    """SHA-256 and CRC-32 of size zero bytes, computed without touching the disk."""
    block = bytes(8 * MIB)
    sha, crc, left = hashlib.sha256(), 0, size
    while left:
        piece = block if left >= len(block) else block[:left]
        sha.update(piece)
        crc = zlib.crc32(piece, crc)
        left -= len(piece)
    return sha.hexdigest(), crc


def prepare(run: Run, args: argparse.Namespace) -> Instance:
    """Temp instance: schema, a user, a 64 KiB and a 4 MiB file (login and public), and a
    sparse multi-GiB file recorded directly in the database."""
    inst_dir = run.tmp / "instance"
    storage = run.tmp / "storage"
    env = base_env()
    env.update({
        "PORTAL_ENV": "production",
        "PORTAL_INSTANCE_PATH": str(inst_dir),
        "PORTAL_SECRET_KEY": os.urandom(32).hex(),
        "PORTAL_STORAGE_URL": storage.as_uri(),
        "PORTAL_REDIS_URL": args.redis_url or start_redis(run),
        "PYTHONUNBUFFERED": "1",
    })
    if args.postgres:
        env["PORTAL_DATABASE_URL"] = postgres_database(run, args.postgres)
        database = "PostgreSQL " + env["PORTAL_DATABASE_URL"].rsplit("/", 1)[1]
    else:
        env["PORTAL_DATABASE_URL"] = f"sqlite:///{inst_dir / 'portal.db'}"
        database = f"SQLite {sqlite3.sqlite_version}"
    inst = Instance(env=env, storage=storage, database=database)
    flask = [VENV_BIN / "flask", "--app", "wsgi"]
    run_checked([*flask, "db", "upgrade"], env, "flask db upgrade")
    run_checked([*flask, "user", "create", USER, "--password", PASSWORD, "--role", "student"],
                env, "flask user create")

    files = run.tmp / "files"
    files.mkdir()
    inst.small, inst.big = os.urandom(64 * 1024), os.urandom(4 * MIB)
    inst.small_key = hashlib.sha256(inst.small).hexdigest()
    inst.big_key = hashlib.sha256(inst.big).hexdigest()
    (files / "small-64k.bin").write_bytes(inst.small)
    (files / "range-4m.bin").write_bytes(inst.big)
    for name, title, access in [("small-64k.bin", "bench 64k", "login"),
                                ("small-64k.bin", "bench 64k public", "public"),
                                ("range-4m.bin", "bench 4m", "login")]:
        out = run_checked([*flask, "file", "add", files / name, "--title", title,
                           "--category", "bench", "--access", access], env, "flask file add")
        inst.ids[title] = int(out.split("\t", 1)[0])

    size = int(args.big_gib * 1024**3)
    started = time.monotonic()
    key, crc = zero_digests(size)
    path = object_path(storage, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size)
    out = run_checked([VENV_BIN / "python", "-m", "bench.add_sparse_version", "--key", key,
                       "--size", size, "--crc32", crc, "--title", "bench sparse",
                       "--access", "login"], env, "add sparse version")
    inst.ids["bench sparse"] = int(out.strip().splitlines()[-1])
    inst.sparse_key, inst.sparse_size = key, size
    print(f"  sparse {args.big_gib:g} GiB object hashed and recorded in "
          f"{time.monotonic() - started:.1f} s", flush=True)
    return inst


def cookie_pairs(headers) -> dict:
    """name -> value from every Set-Cookie header."""
    out = {}
    for raw in headers.get_all("Set-Cookie") or []:
        name, _, rest = raw.partition("=")
        out[name.strip()] = rest.split(";", 1)[0]
    return out


def login(port: int) -> str:
    """GET /login for the CSRF token, POST the form; the Cookie header of the session."""
    status, headers, body = fetch(port, "/login")
    if status != 200:
        raise BenchError(f"GET /login answered {status}")
    cookies = cookie_pairs(headers)
    meta = re.search(rb'<meta[^>]+name="csrf-token"[^>]*>', body)
    token = re.search(rb'content="([^"]*)"', meta.group(0)).group(1).decode() if meta else ""
    form = urlencode({"username": USER, "password": PASSWORD, "csrf_token": token}).encode()
    jar = "; ".join(f"{k}={v}" for k, v in cookies.items())
    status, headers, _ = fetch(port, "/login", method="POST", body=form, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": jar})
    if status != 302:
        raise BenchError(f"POST /login answered {status}, not 302")
    cookies.update(cookie_pairs(headers))
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


def gunicorn(run: Run, name: str, app_spec: str, env: dict, extra: list | None = None,
             ready_path: str = "/healthz") -> Server:
    """The app under the production gunicorn.conf.py on a free port."""
    port = free_port()
    env = dict(env, PORTAL_BIND=f"127.0.0.1:{port}")
    # Each instance gets its own control socket: gunicorn 27 defaults to one fixed path
    # (~/.gunicorn/gunicorn.ctl) that every master on the host would fight over.
    argv = [VENV_BIN / "gunicorn", "-c", ROOT / "gunicorn.conf.py",
            "--bind", f"127.0.0.1:{port}", "--control-socket", run.tmp / f"{name}.ctl",
            *(extra or []), app_spec]
    # SIGINT: gunicorn's quick shutdown (SIGTERM would wait for slow clients).
    server = run.spawn(name, argv, env, stop_signal=signal.SIGINT, port=port)
    wait_http(server, ready_path)
    return server


NGINX_MAIN = """\
worker_processes {workers};
pid {tmp}/nginx-{name}.pid;
error_log {logs}/nginx-{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/nginx-{name}/body;
    proxy_temp_path {tmp}/nginx-{name}/proxy;
    fastcgi_temp_path {tmp}/nginx-{name}/fastcgi;
    uwsgi_temp_path {tmp}/nginx-{name}/uwsgi;
    scgi_temp_path {tmp}/nginx-{name}/scgi;
{servers}
}}
"""

NGINX_DIRECT = """\
    server {{
        listen 127.0.0.1:{port};
        location /objects/ {{ root {storage}; }}
    }}
"""

# Used only when deploy/nginx.conf is missing or cannot be adapted (the run says so).
NGINX_XACCEL_FALLBACK = """\
    upstream portal_xaccel {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location /_protected/ {{ internal; alias {storage}/objects/; }}
        location / {{
            proxy_pass http://portal_xaccel;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
"""


def nginx(run: Run, name: str, conf_text: str, port: int, ready_path: str) -> Server:
    """nginx in the foreground with this configuration file, checked with nginx -t first."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = run.tmp / f"nginx-{name}.conf"
    conf.write_text(conf_text)
    check = subprocess.run([exe, "-t", "-p", run.tmp, "-c", conf], capture_output=True,
                           text=True, check=False)
    if check.returncode != 0:
        raise BenchError(f"nginx -t for {name}: {check.stderr.strip()}")
    server = run.spawn(f"nginx-{name}", [exe, "-p", run.tmp, "-c", conf, "-g", "daemon off;"],
                       stop_signal=signal.SIGTERM, port=port)
    try:
        wait_http(server, ready_path)
    except BenchError:
        run.stop(server)
        raise
    return server


def generated_conf(run: Run, name: str, servers: str) -> str:
    """A minimal nginx.conf (2 workers, sendfile on) around the given server blocks."""
    (run.tmp / f"nginx-{name}").mkdir(exist_ok=True)
    return NGINX_MAIN.format(workers=2, tmp=run.tmp, logs=run.logs, name=name, servers=servers)


def render_deploy_conf(text: str, run: Run, port: int, upstream: int, storage: Path) -> str:
    """deploy/nginx.conf with this run's ports and paths, by replacing the literals that the
    file itself names for that purpose (the same way its functional test renders it)."""
    replacements = {
        "user www-data;": "",
        "pid /run/nginx.pid;": f"pid {run.tmp}/nginx-deploy.pid;",
        "/var/log/nginx/": f"{run.logs}/nginx-deploy-",
        "/var/cache/nginx/": f"{run.tmp}/nginx-deploy-cache-",
        "server 127.0.0.1:8000": f"server 127.0.0.1:{upstream}",
        "listen 80;": f"listen 127.0.0.1:{port};",
        "/srv/portal/storage/objects/": f"{storage}/objects/",
    }
    missing = [k for k in replacements if k not in text]
    if missing:
        raise BenchError(f"deploy/nginx.conf no longer contains {missing}")
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


# ----------------------------------------------------------------------------- the run


@dataclass
class Row:
    """One line of the results table."""

    metric: str
    portal: str
    baseline: str
    ratio: str
    target: str
    result: str


def ratio_row(metric: str, portal: WrkResult | None, base: WrkResult | None, target: float,
              note: str = "") -> Row:
    """A throughput row: portal/baseline req/s against a ratio target."""
    if portal is None or base is None:
        return Row(metric, "n/a" if portal is None else f"{portal.rps:,.0f} req/s",
                   "n/a" if base is None else f"{base.rps:,.0f} req/s", "n/a",
                   f"≥ {target}×", f"not measured{note}")
    ratio = portal.rps / base.rps if base.rps else float("nan")
    verdict = "pass" if ratio >= target else "**FAIL**"
    return Row(metric, f"{portal.rps:,.0f} req/s", f"{base.rps:,.0f} req/s", f"{ratio:.2f}×",
               f"≥ {target}×", verdict + note)


def check_body(what: str, port: int, path: str, headers: dict, status: int,
               expected: bytes) -> str:
    """'' when the target answers correctly, else why not (measuring it would be bogus)."""
    try:
        got_status, _, body = fetch(port, path, headers)
    except (OSError, http.client.HTTPException) as exc:
        return f"{what}: {exc}"
    if got_status != status:
        return f"{what}: status {got_status}, expected {status}"
    if body != expected:
        return f"{what}: body of {len(body)} bytes differs from the file ({len(expected)} bytes)"
    return ""


def slow_phase(run: Run, args: argparse.Namespace, server: Server, label: str,
               inst: Instance, cookie: str) -> dict:
    """1000 slow downloads of the sparse file while probing GET /login latency."""
    out_file = run.logs / f"slow-{label}.json"
    with open(out_file, "wb") as out:
        slow = subprocess.Popen(
            [sys.executable, ROOT / "bench" / "slow_clients.py", "--port", str(server.port),
             "--path", f"/files/{inst.ids['bench sparse']}/download", "--cookie", cookie,
             "--clients", str(args.slow_clients), "--rate", str(args.slow_rate),
             "--duration", str(args.slow_seconds), "--ramp", "3"],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    tracker = Server(f"slow-{label}", slow, out_file, stop_signal=signal.SIGINT)
    run.servers.append(tracker)
    try:
        time.sleep(5)  # ramp (3 s) and the first bytes to every client
        until = time.monotonic() + args.slow_seconds - 7
        lat = probe_latency(server.port, "/login", args.probes, 0.1, until, args.probe_timeout)
        slow.wait(args.slow_seconds + 30)
    finally:
        run.stop(tracker)
    try:
        clients = json.loads(out_file.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        clients = {"error": out_file.read_text(errors="replace")[-500:]}
    failed = sum(1 for x in lat if x == float("inf"))
    result = {"label": label, "probes": len(lat), "failed": failed,
              "p50": percentile(lat, 50), "p95": percentile(lat, 95),
              "p99": percentile(lat, 99), "clients": clients}
    print(f"  {label:<38} probes {len(lat)} failed {failed}  p50 {fmt_ms(result['p50'])}  "
          f"p95 {fmt_ms(result['p95'])}  p99 {fmt_ms(result['p99'])}  clients {clients}",
          flush=True)
    return result


def fmt_ms(seconds: float, timeout: float | None = None) -> str:
    """Milliseconds, or the failure marker for a request that did not complete."""
    if seconds == float("inf"):
        return "timeout" if timeout is None else f"> {timeout * 1e3:.0f} ms (timeout)"
    return f"{seconds * 1e3:.1f} ms"


def warm_page_cache(path: Path) -> None:
    """Read the file once, so that the first server measured does not pay for filling the
    page cache (zero pages of the sparse file) and the second one get it for free."""
    started = time.monotonic()
    fd, null = os.open(path, os.O_RDONLY), os.open(os.devnull, os.O_WRONLY)
    try:
        offset, size = 0, os.fstat(fd).st_size
        while offset < size:
            sent = os.sendfile(null, fd, offset, min(1 << 30, size - offset))
            if sent == 0:
                break
            offset += sent
    finally:
        os.close(fd)
        os.close(null)
    print(f"  page cache warmed in {time.monotonic() - started:.1f} s", flush=True)


def rss_phase(run: Run, server: Server, path: str, headers: dict, size: int) -> dict:
    """One curl fetches the whole file to /dev/null while the workers' RSS is sampled."""
    workers = children(server.proc.pid)
    before = {pid: rss_kib(pid) for pid in workers}
    cpu_before = {pid: cpu_seconds(pid) for pid in workers}
    peak = dict(before)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for pid in workers:
                peak[pid] = max(peak[pid], rss_kib(pid))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    hdr = [x for k, v in headers.items() for x in ("-H", f"{k}: {v}")]
    started = time.monotonic()
    try:
        done = subprocess.run(["curl", "-sS", "-o", "/dev/null", "--max-time", "300", *hdr,
                               "-w", "%{http_code} %{size_download}",
                               f"http://127.0.0.1:{server.port}{path}"],
                              capture_output=True, text=True, check=False, timeout=330)
    finally:
        stop.set()
        sampler.join()
    seconds = time.monotonic() - started
    code, _, got = done.stdout.partition(" ")
    growth = max(peak[p] - before[p] for p in workers) / 1024
    total_growth = (sum(peak.values()) - sum(before.values())) / 1024
    cpu = {p: tuple(a - b for a, b in zip(cpu_seconds(p), cpu_before[p], strict=True))
           for p in workers}
    busiest = max(cpu, key=lambda p: sum(cpu[p]))
    result = {"status": code, "bytes": int(got or 0), "complete": int(got or 0) == size,
              "seconds": seconds, "gbit": int(got or 0) * 8 / seconds / 1e9,
              "rss_before_mib": sum(before.values()) / 1024, "growth_mib": growth,
              "total_growth_mib": total_growth, "workers": len(workers),
              "user_cpu": cpu[busiest][0], "sys_cpu": cpu[busiest][1],
              "curl_error": done.stderr.strip()[:200]}
    print(f"  {server.name:<38} {result['status']} {result['bytes']} B in {seconds:.1f} s, "
          f"worker RSS growth {growth:.1f} MiB (all workers {total_growth:.1f} MiB), busiest "
          f"worker CPU user {result['user_cpu']:.2f} s sys {result['sys_cpu']:.2f} s", flush=True)
    return result


def bench(run: Run, args: argparse.Namespace) -> dict:
    """Everything, in an order that keeps the run short; returns the collected results."""
    res: dict = {"notes": [], "wrk": {}, "load_before": os.getloadavg()}
    print("preparing the instance ...", flush=True)
    inst = prepare(run, args)
    res["database"] = inst.database
    env = inst.env

    print("starting servers ...", flush=True)
    portal = gunicorn(run, "portal-gevent", "wsgi:app", env)
    baseline = gunicorn(run, "baseline-send_file", "bench.baseline_app:app",
                        dict(env, BENCH_STORAGE_DIR=str(inst.storage)), ready_path="/")
    direct_port = free_port()
    ngx_direct = nginx(run, "direct", generated_conf(run, "direct", NGINX_DIRECT.format(
        port=direct_port, storage=inst.storage)), direct_port, "/objects/")
    cookie = login(portal.port)
    auth = {"Cookie": cookie}
    small_id, public_id = inst.ids["bench 64k"], inst.ids["bench 64k public"]
    big_id = inst.ids["bench 4m"]
    rng = {"Range": "bytes=1000-2023"}
    small_obj = f"/objects/{inst.small_key[:2]}/{inst.small_key[2:4]}/{inst.small_key}"

    problems = [p for p in (
        check_body("portal 64k", portal.port, f"/files/{small_id}/download", auth, 200,
                   inst.small),
        check_body("portal 64k public", portal.port, f"/files/{public_id}/download", {}, 200,
                   inst.small),
        check_body("portal range", portal.port, f"/files/{big_id}/download", {**auth, **rng},
                   206, inst.big[1000:2024]),
        check_body("baseline 64k", baseline.port, f"/f/{inst.small_key}", {}, 200, inst.small),
        check_body("baseline range", baseline.port, f"/f/{inst.big_key}", rng, 206,
                   inst.big[1000:2024]),
        check_body("nginx direct", direct_port, small_obj, {}, 200, inst.small),
    ) if p]
    if problems:
        raise BenchError("a target answers wrongly, numbers would be meaningless:\n"
                         + "\n".join(problems))

    w = res["wrk"]
    url = "http://127.0.0.1:{}{}"
    if args.only_xaccel:
        res["xaccel"] = xaccel_phase(run, args, inst, auth, small_obj, direct_port)
        res["load_after"] = os.getloadavg()
        return res
    print("a. 64 KiB downloads", flush=True)
    w["a_portal"] = wrk(args, "portal signed-in 64 KiB",
                        url.format(portal.port, f"/files/{small_id}/download"), auth)
    w["a_base"] = wrk(args, "bare send_file 64 KiB",
                      url.format(baseline.port, f"/f/{inst.small_key}"), {})
    w["a_public"] = wrk(args, "portal public 64 KiB (no session)",
                        url.format(portal.port, f"/files/{public_id}/download"), {})
    print("b. 1 KiB ranges of a 4 MiB file", flush=True)
    w["b_portal"] = wrk(args, "portal signed-in range",
                        url.format(portal.port, f"/files/{big_id}/download"), {**auth, **rng})
    w["b_base"] = wrk(args, "bare send_file range",
                      url.format(baseline.port, f"/f/{inst.big_key}"), rng)

    print("c. x-accel behind nginx vs nginx direct", flush=True)
    settle(inst)  # the portal's flusher records a and b first: not c's work, nor its CPU
    res["xaccel"] = xaccel_phase(run, args, inst, auth, small_obj, direct_port)

    print("e. RSS while serving the sparse file", flush=True)
    warm_page_cache(object_path(inst.storage, inst.sparse_key))
    sparse_path = f"/files/{inst.ids['bench sparse']}/download"
    res["rss_portal"] = rss_phase(run, portal, sparse_path, auth, inst.sparse_size)
    res["rss_base"] = rss_phase(run, baseline, f"/f/{inst.sparse_key}", {}, inst.sparse_size)
    run.stop(baseline)
    run.stop(ngx_direct)

    print(f"d. GET /login under {args.slow_clients} slow downloads", flush=True)
    res["idle"] = probe_latency(portal.port, "/login", 50, 0.02, time.monotonic() + 20,
                                args.probe_timeout)
    res["slow_portal"] = slow_phase(run, args, portal, "portal gevent (production)", inst,
                                    cookie)
    run.stop(portal)
    extra = (["--worker-class", "gthread", "--workers", "2", "--threads", "8"]
             if args.compare_worker == "gthread" else
             ["--worker-class", "sync", "--workers", "2"])
    other = gunicorn(run, f"portal-{args.compare_worker}", "wsgi:app", env, extra)
    res["slow_other"] = slow_phase(run, args, other, f"portal {compare_label(args)}", inst,
                                   login(other.port))
    run.stop(other)
    res["load_after"] = os.getloadavg()
    return res


def compare_label(args: argparse.Namespace) -> str:
    """How the comparison worker configuration is named in the report."""
    return "gthread 2×8" if args.compare_worker == "gthread" else "sync ×2"


@contextlib.contextmanager
def frozen(*servers: Server):
    """Stop these servers' process groups (SIGSTOP) for the duration, so that a baseline
    runs on a machine where the portal (and the import it may still be doing) is idle."""
    groups = [s.proc.pid for s in servers if s.alive()]
    for group in groups:
        os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGCONT)


def xaccel_phase(run: Run, args: argparse.Namespace, inst: Instance, auth: dict,
                 small_obj: str, direct_port: int) -> dict:
    """The portal with PORTAL_SENDFILE=x-accel behind nginx, against nginx direct.

    nginx's event log (deploy/nginx.conf, rendered here) is given to the portal: with it
    the portal grants downloads to nginx, which counts them in that log. The log is read by
    the web workers' flusher (the default: c, c′), then, for comparison, by an importer of
    its own at a lower CPU priority (PORTAL_ANALYTICS_NGINX_IMPORT=external, ``nice -n 10
    flask analytics flush --follow``: c″). After each, how long until every download nginx
    logged is an event in the database is measured.

    This machine's speed drifts by up to 2× within minutes, so each portal run comes right
    after a baseline run of its own, with the portal frozen meanwhile; c is measured
    ``--rounds`` times and the pair with the median ratio reported (all runs are listed).
    """
    out: dict = {"config": "", "error": "", "portal": None, "base": None, "portal4": None,
                 "base4": None, "external": None, "base_external": None, "rounds": [],
                 "drain": None, "drain_external": None}
    events_log = run.logs / "nginx-deploy-portal_events.log"
    env = dict(inst.env, PORTAL_SENDFILE="x-accel", PORTAL_ANALYTICS_NGINX_LOG=str(events_log))
    path = f"/files/{inst.ids['bench 64k']}/download"
    big_path = f"/files/{inst.ids['bench 4m']}/download"
    direct = f"http://127.0.0.1:{direct_port}{small_obj}"
    key = inst.big_key
    direct4 = f"http://127.0.0.1:{direct_port}/objects/{key[:2]}/{key[2:4]}/{key}"
    try:
        with xaccel_servers(run, inst, env, "workers", out) as (port, xportal):
            problem = check_body("x-accel 64k", port, path, auth, 200, inst.small)
            out["range_check"] = check_body(
                "x-accel range", port, big_path,
                {**auth, "Range": "bytes=1000-2023"}, 206, inst.big[1000:2024]) or "ok"
            if problem:
                raise BenchError(f"x-accel answers wrongly, not measured: {problem}")
            quiet_cpus()
            for i in range(1, args.rounds + 1):
                with frozen(xportal):
                    base = wrk(args, f"nginx direct 64 KiB (round {i})", direct, {})
                out["rounds"].append((base, wrk(
                    args, f"portal x-accel via nginx 64 KiB (round {i})",
                    f"http://127.0.0.1:{port}{path}", auth)))
            out["base"], out["portal"] = sorted(
                out["rounds"], key=lambda pair: pair[1].rps / pair[0].rps)[args.rounds // 2]
            if not check_body("x-accel 4m", port, big_path, auth, 200, inst.big):
                with frozen(xportal):
                    out["base4"] = wrk(args, "nginx direct 4 MiB", direct4, {})
                out["portal4"] = wrk(args, "portal x-accel via nginx 4 MiB",
                                     f"http://127.0.0.1:{port}{big_path}", auth)
            out["drain"] = drain(inst, events_log)
        external = dict(env, PORTAL_ANALYTICS_NGINX_IMPORT="external")
        with xaccel_servers(run, inst, external, "external", out) as (port, xportal):
            importer = run.spawn("importer", ["nice", "-n", "10", VENV_BIN / "flask", "--app",
                                              "wsgi", "analytics", "flush", "--follow"],
                                 external)
            check_body("x-accel 64k", port, path, auth, 200, inst.small)
            quiet_cpus()
            with frozen(xportal, importer):
                out["base_external"] = wrk(args, "nginx direct 64 KiB (before c″)", direct, {})
            out["external"] = wrk(args, "portal x-accel, log read by a niced importer",
                                  f"http://127.0.0.1:{port}{path}", auth)
            out["drain_external"] = drain(inst, events_log, out["drain"])
            run.stop(importer)
    except BenchError as exc:
        out["error"] = str(exc).splitlines()[0]
        print(f"  x-accel not measured: {exc}", flush=True)
    return out


@contextlib.contextmanager
def xaccel_servers(run: Run, inst: Instance, env: dict, name: str, out: dict):
    """An x-accel portal and nginx in front of it (deploy/nginx.conf when it can be
    adapted); yields nginx's port and the portal, stops both after."""
    xportal = gunicorn(run, f"portal-xaccel-{name}", "wsgi:app", env)
    port = free_port()
    deploy = ROOT / "deploy" / "nginx.conf"
    ngx = None
    try:
        try:
            conf = render_deploy_conf(deploy.read_text(), run, port, xportal.port, inst.storage)
            ngx = nginx(run, "deploy", conf, port, "/healthz")
            out["config"] = "deploy/nginx.conf (ports and paths replaced)"
        except (BenchError, OSError) as exc:
            out["config"] = ("generated fallback (deploy/nginx.conf could not be used: "
                             f"{' '.join(str(exc).split())[:300]})")
            ngx = nginx(run, "xaccel", generated_conf(run, "xaccel", NGINX_XACCEL_FALLBACK.format(
                port=port, upstream=xportal.port, storage=inst.storage)), port, "/healthz")
        print(f"  nginx config: {out['config']}", flush=True)
        yield port, xportal
    finally:
        if ngx is not None:
            run.stop(ngx)
        run.stop(xportal)


def settle(inst: Instance, quiet: float = 3.0, timeout: float = 300) -> None:
    """Wait until the recorded download events stop growing for ``quiet`` seconds (the
    flushers have written what earlier phases caused)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(inst.env["PORTAL_DATABASE_URL"])
    started = time.monotonic()
    last, since = -1, time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            with engine.connect() as conn:
                count = conn.execute(text("SELECT count(*) FROM download_events")).scalar()
            if count != last:
                last, since = count, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
            time.sleep(0.5)
    finally:
        engine.dispose()
    idle = quiet_cpus(timeout)
    print(f"  {last:,} download events recorded; settled after "
          f"{time.monotonic() - started:.0f} s (CPUs {idle:.0%} idle)", flush=True)


def quiet_cpus(timeout: float = 60) -> float:
    """Wait (at most ``timeout`` s) for a second in which the CPUs are 90 % idle; the share."""
    deadline = time.monotonic() + timeout
    idle = cpu_idle(1.0)
    while idle < 0.9 and time.monotonic() < deadline:
        idle = cpu_idle(1.0)
    return idle


def cpu_idle(seconds: float) -> float:
    """The share of all CPUs' time that was idle over the next ``seconds`` (/proc/stat)."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(1, total1 - total0)


def drain(inst: Instance, events_log: Path, before: dict | None = None,
          timeout: float = 300) -> dict:
    """Wait until every download nginx logged is an event in the database; how long that
    took after the load stopped, and the counts (those after ``before``, an earlier
    drain's result: the phases share the log and the database)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(inst.env["PORTAL_DATABASE_URL"])
    started = time.monotonic()
    logged = offset = 0
    try:
        while True:
            time.sleep(1.2)  # nginx writes its log buffer at least once a second
            with open(events_log, "rb") as fh:  # only what was added (a full scan of
                fh.seek(offset)  # 100 MB a second would take a CPU from the importer)
                data = fh.read()
            data = data[:data.rfind(b"\n") + 1]
            offset += len(data)
            logged += data.count(b'"status":200') + data.count(b'"status":206')
            with engine.connect() as conn:
                stored = conn.execute(text(
                    "SELECT count(*) FROM download_events WHERE served_from = 'nginx'")).scalar()
            waited = time.monotonic() - started
            if stored >= logged or waited > timeout:
                break
    finally:
        engine.dispose()
    result = {"logged": logged - (before or {}).get("logged_total", 0),
              "stored": stored - (before or {}).get("stored_total", 0), "seconds": waited,
              "logged_total": logged, "stored_total": stored}
    print(f"  importer: {result['stored']:,} of {result['logged']:,} logged downloads recorded "
          f"{waited:.1f} s after the load stopped", flush=True)
    return result


# ----------------------------------------------------------------------------- report


def machine() -> dict:
    """nproc, CPU model, RAM, kernel and the versions that matter."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    versions = {"Python": platform.python_version()}
    for dist in ("flask", "werkzeug", "gunicorn", "gevent", "sqlalchemy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    for exe, flag in (("nginx", "-v"), ("wrk", "-v"), ("curl", "--version"),
                      ("redis-server", "--version")):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run([exe, flag], capture_output=True, text=True, timeout=5,
                                  check=False)
            text = (done.stdout + done.stderr).strip().splitlines()
            versions[exe] = text[0] if text else "?"
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": mem / 1024**3,
            "kernel": platform.release(), "versions": versions}


def rows(res: dict, args: argparse.Namespace) -> list[Row]:
    """The results table."""
    w = res["wrk"]
    x = res["xaccel"]
    out = [] if args.only_xaccel else [
        ratio_row("a. signed-in 64 KiB download", w["a_portal"], w["a_base"], 0.8),
        ratio_row("a′. public 64 KiB download (no session; info)", w["a_public"], w["a_base"],
                  0.8, " (info)"),
        ratio_row("b. 1 KiB Range of a 4 MiB file", w["b_portal"], w["b_base"], 0.8)]
    out += [
        ratio_row(f"c. x-accel via nginx vs nginx direct, 64 KiB (median of "
                  f"{len(x['rounds'])} paired rounds)", x["portal"], x["base"], 0.5,
                  f" ({x['error']})" if x["error"] else ""),
        ratio_row("c′. the same with a 4 MiB file (info)", x["portal4"], x["base4"], 0.5,
                  " (info)"),
        ratio_row("c″. c with nginx's log read by a niced importer process (info)",
                  x["external"], x["base_external"], 0.5, " (info)"),
    ]
    if args.only_xaccel:
        return out
    sp, so = res["slow_portal"], res["slow_other"]
    timeout = args.probe_timeout

    def lat(r: dict) -> str:
        return (f"p50 {fmt_ms(r['p50'], timeout)} / p95 {fmt_ms(r['p95'], timeout)} / "
                f"p99 {fmt_ms(r['p99'], timeout)} ({r['failed']}/{r['probes']} failed)")

    out.append(Row(f"d. GET /login latency under {args.slow_clients} downloads at "
                   f"{args.slow_rate // 1000} KB/s (baseline: {compare_label(args)} portal)",
                   lat(sp), lat(so), "n/a", "p99 < 100 ms",
                   "pass" if sp["p99"] < 0.1 else "**FAIL**"))
    rp, rb = res["rss_portal"], res["rss_base"]
    ok = rp["complete"] and rp["growth_mib"] < 50
    out.append(Row(f"e. worker RSS growth, one {args.big_gib:g} GiB download",
                   f"{rp['growth_mib']:.1f} MiB", f"{rb['growth_mib']:.1f} MiB", "n/a",
                   "< 50 MB", ("pass" if ok else "**FAIL**")
                   + ("" if rp["complete"] else " (download incomplete)")))
    return out


def table(rs: list[Row]) -> str:
    """Markdown table of the rows."""
    lines = ["| metric | portal | baseline | ratio | target | result |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.metric} | {r.portal} | {r.baseline} | {r.ratio} | {r.target} | {r.result} |"
              for r in rs]
    return "\n".join(lines)


def details(res: dict, args: argparse.Namespace) -> str:
    """Per-run numbers behind the table."""
    lines = ["| wrk run | req/s | p50 | p99 | bytes/response | non-2xx | socket errors |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    x = res["xaccel"]
    runs = list(res["wrk"].values()) + [r for pair in x["rounds"] for r in pair] + [
        r for r in (x["base4"], x["portal4"], x["base_external"], x["external"]) if r]
    for r in runs:
        lines.append(f"| {r.target} | {r.rps:,.0f} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms | "
                     f"{r.bytes_per_request:,.0f} | {r.non_2xx} | {r.errors or '-'} |")
    if args.only_xaccel:
        lines.append("")
        return "\n".join(lines + xaccel_details(res["xaccel"]))
    idle = res["idle"]
    lines += ["", f"- GET /login with no other load (50 sequential requests): p50 "
              f"{fmt_ms(percentile(idle, 50))}, p99 {fmt_ms(percentile(idle, 99))}."]
    for key in ("slow_portal", "slow_other"):
        s = res[key]
        c = s["clients"]
        lines.append(f"- Slow clients against {s['label']}: {json.dumps(c)}; /login probes: "
                     f"{s['probes']} sent, {s['failed']} failed or over the "
                     f"{args.probe_timeout:g} s timeout.")
    for key, name in (("rss_portal", "portal"), ("rss_base", "bare send_file")):
        r = res[key]
        lines.append(
            f"- {args.big_gib:g} GiB sparse download from the {name}: HTTP {r['status']}, "
            f"{r['bytes']:,} bytes ({'complete' if r['complete'] else 'INCOMPLETE'}) in "
            f"{r['seconds']:.1f} s ({r['gbit']:.1f} Gbit/s); RSS of {r['workers']} workers "
            f"{r['rss_before_mib']:.0f} MiB before, peak growth {r['growth_mib']:.1f} MiB in "
            f"one worker, {r['total_growth_mib']:.1f} MiB summed; CPU of the serving worker: "
            f"user {r['user_cpu']:.2f} s, system {r['sys_cpu']:.2f} s"
            + (f"; curl: {r['curl_error']}" if r["curl_error"] else "") + ".")
    return "\n".join(lines + xaccel_details(res["xaccel"]))


def xaccel_details(x: dict) -> list[str]:
    """What the x-accel phase saw besides its wrk runs."""
    lines = []
    if x["rounds"]:
        lines.append("- c, each round's portal / nginx-direct ratio: " + ", ".join(
            f"{p.rps / b.rps:.2f}×" for b, p in x["rounds"]) + " (nginx direct measured just "
            "before each portal run, with the portal frozen by SIGSTOP meanwhile).")
    lines.append(f"- x-accel: nginx configuration: {x['config']}; signed-in Range through "
                 f"nginx: {x.get('range_check', 'not checked')}"
                 + (f"; problem: {x['error']}" if x["error"] else "") + ".")
    for key, who in (("drain", "the web workers (c, c′)"),
                     ("drain_external", "a niced importer (c″)")):
        if x.get(key):
            d = x[key]
            lines.append(f"- x-accel, nginx's log read by {who}: {d['stored']:,} of the "
                         f"{d['logged']:,} downloads nginx had logged were recorded in the "
                         f"database {d['seconds']:.1f} s after the load stopped.")
    return lines


def render(res: dict, args: argparse.Namespace, command: str, started: datetime,
           seconds: float, old_analysis: str) -> str:
    """docs/performance.md."""
    m = machine()
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    return f"""# Download performance

Produced by `bench/run_download_bench.py`; every number below comes from one run of it on
the machine described here, each target measured against a baseline started in the same run.
Re-run it to refresh this file (the analysis section between the markers is kept).

- Date: {started:%Y-%m-%d %H:%M} UTC (run took {seconds:.0f} s)
- Machine: {m['nproc']} CPUs, {m['cpu']}, {m['ram_gib']:.1f} GiB RAM, Linux {m['kernel']}
- Versions: {versions}
- Database: {res['database']}; Redis: {'given' if args.redis_url else 'private redis-server'}
- Load average (1/5/15 min) before the run: {load(res['load_before'])}, after:
  {load(res['load_after'])}{busy_note(res)}
- Command: `{command}`
- Load: wrk -t {args.threads} -c {args.connections} -d {args.duration}s --latency (after a
  {args.warmup} s warm-up) for every throughput target; load generator, servers and nginx
  share the same {m['nproc']} CPUs. Portal and baseline: `gunicorn -c gunicorn.conf.py`
  (gevent, {m['nproc']} workers, portal.sendfile installed in both).

## Results

{table(rows(res, args))}

## Details

{details(res, args)}

## Analysis

{ANALYSIS_START}
{old_analysis.strip() or "(not written yet)"}
{ANALYSIS_END}
"""


def load(avg: tuple) -> str:
    """A load-average triple."""
    return " / ".join(f"{x:.2f}" for x in avg)


def busy_note(res: dict) -> str:
    """A warning when something else was using the CPUs during the run."""
    if max(res["load_before"][0], res["load_after"][0]) < 1.0:
        return ""
    return (" — other processes were using the CPUs during this run, so absolute numbers "
            "are low and noisy; the ratios compare targets measured minutes apart under "
            "that varying load")


def old_analysis(path: Path) -> str:
    """The hand-written analysis of the current file, if any."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    start, end = text.find(ANALYSIS_START), text.find(ANALYSIS_END)
    if start < 0 or end < start:
        return ""
    return text[start + len(ANALYSIS_START):end]


def other_sections(path: Path) -> str:
    """Whatever follows the analysis (other benchmarks' sections), kept as it is."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    end = text.find(ANALYSIS_END)
    return text[end + len(ANALYSIS_END):].strip() if end >= 0 else ""


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--warmup", type=int, default=2, help="seconds of wrk before each run")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slow-clients", type=int, default=1000)
    p.add_argument("--slow-rate", type=int, default=20_000, help="bytes/s per slow client")
    p.add_argument("--slow-seconds", type=int, default=35)
    p.add_argument("--probes", type=int, default=200)
    p.add_argument("--probe-timeout", type=float, default=2.0)
    p.add_argument("--big-gib", type=float, default=5.0, help="size of the sparse file")
    p.add_argument("--compare-worker", choices=("gthread", "sync"), default="gthread")
    p.add_argument("--postgres", nargs="?", const="postgresql://postgres@127.0.0.1:5432/test",
                   default=None, metavar="ADMIN_URL",
                   help="use a throw-away PostgreSQL database created through ADMIN_URL")
    p.add_argument("--redis-url", default=None, help="use this Redis instead of a private one")
    p.add_argument("--doc", type=Path, default=DOC, help="where to write the report")
    p.add_argument("--no-doc", action="store_true", help="print only")
    p.add_argument("--wait-idle", type=int, default=0, metavar="SECONDS",
                   help="first wait up to this long for the 1-minute load average to drop "
                        "below 1.5 (other processes skew every number)")
    p.add_argument("--rounds", type=int, default=3,
                   help="paired (nginx direct, portal) rounds of c; the median is reported")
    p.add_argument("--only-xaccel", action="store_true",
                   help="only c, c′ and c″ (x-accel behind nginx), no doc")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp folder (logs)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 s wrk, 200 slow clients for 15 s, 1 GiB, no doc")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.only_xaccel:
        args.no_doc = True
    if args.quick:
        args.duration, args.warmup, args.slow_clients = 3, 1, 200
        args.slow_seconds, args.probes, args.big_gib, args.no_doc = 15, 50, 1.0, True
    return args


def raise_nofile(want: int) -> None:
    """Enough descriptors for the slow clients and the servers (inherited by children)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the doc."""
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/run_download_bench.py",
                          *(sys.argv[1:] if argv is None else argv)])
    for tool in ("wrk", "curl", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"bench: {tool} is required (apt-get install -y {tool})", file=sys.stderr)
            return 2
    raise_nofile(args.slow_clients * 3 + 1024)

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    deadline = time.monotonic() + args.wait_idle
    while os.getloadavg()[0] >= 1.5 and time.monotonic() < deadline:
        time.sleep(5)
    started, t0 = datetime.now(UTC), time.monotonic()
    run = Run(keep=args.keep_tmp)
    try:
        res = bench(run, args)
    except KeyboardInterrupt:
        print("bench: interrupted, cleaning up", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        run.close()
    seconds = time.monotonic() - t0
    print(f"\nload average before {load(res['load_before'])}, after {load(res['load_after'])}"
          f"{busy_note(res)}")
    print(table(rows(res, args)))
    print()
    print(details(res, args))
    if not args.no_doc:
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        rest = other_sections(args.doc)
        args.doc.write_text(render(res, args, command, started, seconds,
                                   old_analysis(args.doc)) + (f"\n{rest}\n" if rest else ""))
        print(f"\nwrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
