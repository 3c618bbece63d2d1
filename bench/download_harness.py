"""Harness of bench/run_download_bench.py: processes, wrk, the temporary instance, the
servers (gunicorn, nginx, copyparty) and the measurements they share.

Everything binds to 127.0.0.1 and is started through ``Run.spawn``, so that ``Run.close``
stops it (each in its own process group) and removes the temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import nginx_conf

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
USER, PASSWORD = "benchuser", "bench-password-1"
MIB = 1024 * 1024
# The tail-latency rows (issue 19) read 1 KiB from the middle of a 1 GiB sparse file.
RANGE_FILE_GIB = 1
TAIL_RANGE = f"bytes={2**29}-{2**29 + 1023}"


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
    max_ms: float = float("nan")
    connections: int = 0

    @property
    def bytes_per_request(self) -> float:
        """Mean response size on the wire, headers included."""
        return self.bytes_read / self.requests if self.requests else 0.0

    @property
    def timeouts(self) -> int:
        """Requests wrk gave up waiting for (its 2 s default), from ``Socket errors``."""
        m = re.search(r"timeout (\d+)", self.errors)
        return int(m.group(1)) if m else 0

    @property
    def other_errors(self) -> str:
        """The socket errors that are not timeouts (connect, read, write), '' when none."""
        found = dict(re.findall(r"(connect|read|write) (\d+)", self.errors))
        return ", ".join(f"{k} {v}" for k, v in found.items() if v != "0")


def _duration(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")


def parse_wrk(target: str, out: str) -> WrkResult:
    """Requests/sec, latency percentiles, bytes, errors from wrk --latency output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)(B|KB|MB|GB|TB) read", out)
    requests, read = int(m.group(1)), float(m.group(2)) * SIZES[m.group(3)]
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    # "    Latency   avg   stdev   max   +/- stdev": the third column is the slowest request.
    stats = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", out, re.M)
    errors = re.search(r"Socket errors: (.*)", out)
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    conns = re.search(r"(\d+) threads and (\d+) connections", out)
    return WrkResult(target, rps, requests, read,
                     _duration(pct.get("50", "nan")) * 1e3, _duration(pct.get("99", "nan")) * 1e3,
                     errors.group(1).strip() if errors else "", int(non.group(1)) if non else 0,
                     _duration(stats.group(1)) * 1e3 if stats else float("nan"),
                     int(conns.group(2)) if conns else 0)


def wrk(args: argparse.Namespace, target: str, url: str, headers: dict,
        connections: int | None = None) -> WrkResult:
    """A short warm-up, then the measured wrk run with the shared parameters (``connections``
    instead of ``--connections`` for the tail-latency rows)."""
    hdr = [x for k, v in headers.items() for x in ("-H", f"{k}: {v}")]
    conns = connections or args.connections
    base = ["wrk", "-t", str(args.threads), "-c", str(conns), "--latency", *hdr]
    subprocess.run([*base, "-d", f"{args.warmup}s", url], capture_output=True, check=False,
                   timeout=args.warmup + 30)
    done = subprocess.run([*base, "-d", f"{args.duration}s", url], capture_output=True,
                          text=True, check=False, timeout=args.duration + 60)
    if done.returncode != 0:
        raise BenchError(f"wrk failed for {target}: {done.stderr}")
    result = parse_wrk(target, done.stdout)
    print(f"  {target:<44} c{conns:<3} {result.rps:>9.0f} req/s  p50 {result.p50_ms:.2f} ms  "
          f"p99 {result.p99_ms:.2f} ms  max {result.max_ms:.2f} ms  "
          f"timeouts {result.timeouts}  {result.bytes_per_request:.0f} B/resp  "
          f"non-2xx {result.non_2xx}  {result.other_errors}", flush=True)
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
    """The pids whose parent is pid: a master's gunicorn workers (not the analytics flusher
    process the master also keeps, gunicorn.conf.py)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"analytics" not in cmdline:
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
    range_key: str = ""
    range_size: int = 0
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

    for title, gib in (("bench sparse", args.big_gib), ("bench range 1g", RANGE_FILE_GIB)):
        size = int(gib * 1024**3)
        started = time.monotonic()
        key, crc = zero_digests(size)
        path = object_path(storage, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.truncate(size)
        out = run_checked([VENV_BIN / "python", "-m", "bench.add_sparse_version", "--key", key,
                           "--size", size, "--crc32", crc, "--title", title,
                           "--access", "login"], env, "add sparse version")
        inst.ids[title] = int(out.strip().splitlines()[-1])
        if title == "bench sparse":
            inst.sparse_key, inst.sparse_size = key, size
        else:
            inst.range_key, inst.range_size = key, size
        print(f"  sparse {gib:g} GiB object ({title}) hashed and recorded in "
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
    """deploy/nginx.conf with this run's ports and paths, rendered by nginx_conf (the
    renderer the functional tests use); BenchError when the file no longer fits it."""
    try:
        return nginx_conf.render_deploy_conf(
            text, port=port, upstream_port=upstream, storage=storage,
            pid=f"{run.tmp}/nginx-deploy.pid", log_prefix=f"{run.logs}/nginx-deploy-",
            cache_prefix=f"{run.tmp}/nginx-deploy-cache-")
    except nginx_conf.ConfDrift as exc:
        raise BenchError(str(exc)) from exc



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



# ----------------------------------------------------------------------------- copyparty

# Pinned so that the baseline is the same program from run to run; --copyparty-spec changes it.
COPYPARTY_SPEC = "copyparty==1.20.26"
COPYPARTY_VENV = ROOT / "bench" / ".venv-copyparty"  # git-ignored, reused by later runs


def copyparty_python(spec: str = COPYPARTY_SPEC, venv: Path = COPYPARTY_VENV,
                     ) -> tuple[Path, str]:
    """The interpreter of a venv of copyparty's own (created and filled with pip on first
    use, kept apart from the portal's .venv) and the copyparty version installed in it."""
    python = venv / "bin" / "python"
    env = base_env()
    if not python.exists():
        print(f"  creating {venv.relative_to(ROOT)} for copyparty ...", flush=True)
        base = shutil.which("python3") or sys.executable
        run_checked([base, "-m", "venv", venv], env, "python3 -m venv", timeout=300)
    version_of = [python, "-c", "import importlib.metadata as m; print(m.version('copyparty'))"]
    wanted = spec.partition("==")[2]
    try:
        installed = run_checked(version_of, env, "copyparty version").strip()
    except BenchError:
        installed = ""
    if not installed or (wanted and installed != wanted):
        print(f"  pip install {spec} into {venv.relative_to(ROOT)} ...", flush=True)
        run_checked([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                     spec], env, f"pip install {spec}", timeout=600)
        installed = run_checked(version_of, env, "copyparty version").strip()
    return python, installed


def copyparty(run: Run, name: str, python: Path, share: Path, cores: int) -> Server:
    """copyparty with ``-j cores`` on a free loopback port: ``share`` read-only at /share/,
    no accounts (so anyone may read), plain HTTP, its state (salts, sessions, the volume's
    history folder) inside the run's temp folder instead of ~/.config. It logs every request
    to its log file, as the portal's gunicorn writes its access log."""
    port = free_port()
    state = run.tmp / f"copyparty-{name}"
    state.mkdir()
    env = dict(base_env(), XDG_CONFIG_HOME=str(state / "config"))
    argv = [python, "-m", "copyparty", "-j", cores, "-i", "127.0.0.1", "-p", port,
            "-v", f"{share}:/share:r", "--hist", state / "hist", "--http-only", "--no-crt"]
    server = run.spawn(name, argv, env, stop_signal=signal.SIGINT, port=port)
    wait_http(server, "/share/")
    return server


def copyparty_share(run: Run, inst: Instance) -> Path:
    """A folder holding the portal's own stored 64 KiB and 1 GiB objects (hard links to the
    same inodes), for copyparty to serve the bytes the portal and nginx serve."""
    share = run.tmp / "copyparty-share"
    share.mkdir(exist_ok=True)
    for name, key in (("small-64k.bin", inst.small_key), ("range-1g.bin", inst.range_key)):
        target = share / name
        if not target.exists():
            os.link(object_path(inst.storage, key), target)
    return share
