"""gunicorn settings for the portal (``gunicorn -c gunicorn.conf.py wsgi:app``).

Worker class: gevent. A download is mostly waiting on a slow client; a sync or thread worker
ties a whole worker or thread to each such client, so 2 workers x 8 threads stop answering once
16 slow downloads run. A gevent worker holds thousands of connections in greenlets, and
portal.sendfile makes its file sends zero-copy (os.sendfile on the socket, waiting
cooperatively when the client is slow), so the bytes never pass through Python.

Every value can be overridden with the usual GUNICORN_CMD_ARGS or PORTAL_GUNICORN_* variables;
the PORTAL_ ones, their defaults and their checks are the app's (portal/settings.py).
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gevent import monkey
from gevent import sleep as _gevent_sleep
from gunicorn.http import message as _gunicorn_message
from gunicorn.workers.ggevent import GeventWorker as GunicornGeventWorker

# A gevent worker patches the standard library when it starts, after the fork; by then this
# master has imported the app (just below, and again for the worker class), and with it
# modules that took the unpatched ssl.SSLContext by name (redis.asyncio.connection), which
# gevent reported at every worker's start ("MonkeyPatchWarning: Monkey-patching ssl after ssl
# has already been imported"). ssl patched here, before the app, every later import binds
# gevent's SSLContext. The master makes no TLS connection itself; a worker class other than
# gevent gets gevent's ssl, which blocks as the standard one does outside a gevent loop.
# Only when gunicorn reads this file as its configuration (it loads it as "__config__"): a
# process that runs it otherwise (a test reading the settings it makes) has long imported
# ssl's users, and patching there would give it half-patched ssl.
if __name__ == "__config__":
    monkey.patch_ssl()

# Metrics of every process (portal/instruments.py): prometheus-client's multiprocess mode
# keeps each process's values in files of one folder per master, so a scrape that reaches any
# worker sees the node's totals. The folder is chosen here, before the app (below) imports
# prometheus_client, and emptied when the master starts, not when a reload (SIGHUP) reads
# this file again: the workers' counts live on. PROMETHEUS_MULTIPROC_DIR names it (one
# folder per master); unset, a temporary folder that on_exit removes.
if os.environ.get("_PORTAL_METRICS_MASTER") != str(os.getpid()):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
        for _stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
            os.remove(_stale)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="portal-metrics-")
        os.environ["_PORTAL_METRICS_MADE"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.environ["_PORTAL_METRICS_MASTER"] = str(os.getpid())

from portal.config import ConfigError, from_environ  # after the patch and the metrics folder

# The flush of download events to SQL runs beside the workers, in a process of its own at a
# lower CPU priority, not in them: in a worker it held the event loop for the length of each
# SQL batch (py-spy under wrk: a third of a worker's samples, max latency ~1 s; docs/
# performance.md). The workers only append finished events to Redis. PORTAL_ANALYTICS_FLUSHER=
# workers puts the flush back into the workers (one process fewer).
os.environ.setdefault("PORTAL_ANALYTICS_FLUSHER", "process")
try:
    _settings = from_environ()
except ConfigError as exc:  # a clear line, as wsgi.py gives, not gunicorn's traceback
    sys.exit(f"portal: configuration error: {exc}")

bind = _settings.bind
# "gevent" is the portal's gevent worker: gunicorn's, with the warm download answered in a
# leaner request cycle (portal/worker.py). Any other value is gunicorn's to resolve.
worker_class = ("portal.worker.GeventWorker" if _settings.gunicorn_worker_class == "gevent"
                else _settings.gunicorn_worker_class)
# One process per core (the default): greenlets give the concurrency, processes give the CPU.
workers = _settings.gunicorn_workers
worker_connections = _settings.gunicorn_connections
# A greenlet that blocks the loop (never on purpose) is killed after this long.
timeout = 60
graceful_timeout = 30
keepalive = 5
# The longest request line (method, target, version) in bytes; a longer one is answered 414
# with the portal's page (portal/worker.py). A search goes into the URL, where a Chinese
# character takes 9 bytes (its 3 UTF-8 bytes percent-encoded): gunicorn's default, 4094,
# refused a search of more than about 450 of them. 20480 holds one of 2,000 characters
# (18,000 bytes) with the rest of the catalog's query (category, sort, page);
# deploy/nginx.conf's large_client_header_buffers (20k) is the same limit in front. gunicorn
# itself takes no value between 8190 (its MAX_REQUEST_LINE) and 0 (no limit at all): the cap
# is raised here, in the master, before any worker (of whatever class) reads it.
limit_request_line = 20480
_gunicorn_message.MAX_REQUEST_LINE = max(_gunicorn_message.MAX_REQUEST_LINE, limit_request_line)
# One access line per request; behind nginx (which logs every request) it can be switched off
# with PORTAL_GUNICORN_ACCESSLOG= (empty): a blocking write per request costs ~2 % (py-spy).
accesslog = _settings.gunicorn_accesslog
# gunicorn 27 puts every master's control socket at ~/.gunicorn/gunicorn.ctl, so two portals on
# one host (scale-out, tests, benchmarks) would fight over it: off unless a path is given.
control_socket_disable = _settings.gunicorn_control_socket is None
if not control_socket_disable:
    control_socket = _settings.gunicorn_control_socket
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(D)sus "%(a)s"'
# The same lines as gunicorn's own logger, built from the atoms the format names only.
logger_class = "portal.accesslog.AccessLogger"


_flusher = {"proc": None, "stopping": False}


def _flush_command() -> list[str]:
    nginx = _settings.analytics_nginx_import != "external"
    # Paced as well as niced: with the kernel's autogroups (a session each, the default on
    # desktops and many servers) nice only ranks processes of one session, not nginx's.
    return [sys.executable, "-m", "flask", "--app", "wsgi", "analytics", "flush", "--follow",
            "--quiet", "--paced", "--nginx" if nginx else "--no-nginx"]


def _keep_flushing(server) -> None:
    """Run the flusher, and start it again should it exit (a crash, an OOM kill)."""
    while not _flusher["stopping"]:
        proc = subprocess.Popen(_flush_command(), cwd=Path(__file__).resolve().parent,
                                stdin=subprocess.DEVNULL, preexec_fn=lambda: os.nice(10))
        _flusher["proc"] = proc
        code = proc.wait()
        _process_gone(proc.pid)
        if not _flusher["stopping"]:
            server.log.warning("analytics flusher exited with %s; starting it again", code)
            time.sleep(1)


def when_ready(server):
    """Start the analytics flusher process (PORTAL_ANALYTICS_FLUSHER=process)."""
    if _settings.analytics_flusher == "process":
        threading.Thread(target=_keep_flushing, args=(server,), name="analytics-flusher",
                         daemon=True).start()


def on_exit(server):
    """Stop the flusher: SIGTERM makes it finish its flush and exit. Remove the metrics
    folder this master made."""
    _flusher["stopping"] = True
    proc = _flusher["proc"]
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    made = os.environ.get("_PORTAL_METRICS_MADE")
    if made and os.environ.get("_PORTAL_METRICS_MASTER") == str(os.getpid()):
        shutil.rmtree(made, ignore_errors=True)


def _process_gone(pid: int) -> None:
    """A worker or the flusher exited: its gauges leave the node's metrics (its counters
    stay in the totals)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def child_exit(server, worker):
    """A worker exited (portal/instruments.py)."""
    _process_gone(worker.pid)


def post_worker_init(worker):
    """Zero-copy sends that report their byte count (see portal/sendfile.py)."""
    from portal import sendfile
    from portal.analytics import recorder
    from portal.instruments import TALLY

    sendfile.install()
    recorder.start_flusher(worker.wsgi)  # buffered download events go to SQL off-request
    TALLY.start()  # this worker's counts reach the node's metrics every second


def post_request(worker, req, environ, resp):
    """Let the worker's other connections run before this one's next request.

    A gevent socket only yields when it would block. A download manager on a fast link has
    its next keep-alive request waiting by the time a 64 KiB response is sent, so the
    connection's greenlet read it without yielding, served it, and so on: one connection
    held its worker for up to 2 s while the others' requests waited (docs/performance.md,
    "The stalls"). A timer, not sleep(0): sleep(0) only runs callbacks, a timer makes the
    loop poll I/O first, so every ready connection gets its turn, in order.
    """
    if isinstance(worker, GunicornGeventWorker):
        _gevent_sleep(1e-6)


def worker_exit(server, worker):
    """Write the download events this worker still buffers (portal/analytics/recorder.py),
    end the connection leases it holds (portal/download/leases.py) and hand in its last
    counts (portal/instruments.py)."""
    from portal.analytics import recorder
    from portal.download import leases
    from portal.instruments import TALLY

    recorder.shutdown_all()
    leases.release_all()
    TALLY.flush()
