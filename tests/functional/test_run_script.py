"""``bash scripts/run.sh`` (the README's first command) with the embedded default kept in
another folder (PORTAL_INSTANCE_PATH): it seeds the demo there once and serves."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from servers import ROOT, request, stop_process, tail

from tests.helpers import free_port, wait_for

pytestmark = pytest.mark.slow


def run_portal(instance: Path, redis_url: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "GUNICORN_"))}
    env.update({"PORTAL_INSTANCE_PATH": str(instance), "PORTAL_BIND": f"127.0.0.1:{port}",
                "PORTAL_REDIS_URL": redis_url, "PORTAL_DEMO_BIG_FILE_MB": "1",
                "PORTAL_GUNICORN_WORKERS": "2", "PORTAL_PASSWORD_HASH_METHOD": "scrypt:1024:8:1"})
    with open(log, "ab") as out:
        proc = subprocess.Popen(["bash", "scripts/run.sh"], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"scripts/run.sh exited {proc.returncode}:\n{tail(log)}")
        try:
            return request(base, "GET", "/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    wait_for(up, 300, f"scripts/run.sh on {base}", interval=0.5)
    return proc, base


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    stop_process(proc, signal.SIGINT, timeout=20)


def test_run_script_keeps_everything_in_the_instance_path(tmp_path, redis_url):
    instance = tmp_path / "elsewhere" / "instance"
    log = tmp_path / "run.log"
    proc, base = run_portal(instance, redis_url, log)
    try:
        said = log.read_text()
        assert f"Campus portal: {base} " in said  # the address it really serves
        assert "run.sh: seeding the demo" in said  # the long first-start step says so first
        # gevent patches ssl in the master before the app is imported: no warning per worker
        assert "MonkeyPatchWarning" not in said and "Traceback" not in said, said[-3000:]
        assert (instance / ".demo-seeded").exists() and (instance / "portal.db").exists()
        status, _, body = request(base, "GET", "/")
        assert status == 200 and "csrf-token" in body.decode()
    finally:
        stop(proc)
    marker = (instance / ".demo-seeded").stat().st_mtime_ns
    proc, base = run_portal(instance, redis_url, log)  # a second start does not seed again
    try:
        assert request(base, "GET", "/healthz")[0] == 200
        assert (instance / ".demo-seeded").stat().st_mtime_ns == marker
        assert log.read_text().count("run.sh: seeding the demo") == 1
    finally:
        stop(proc)


def test_a_busy_port_says_what_to_do(tmp_path, redis_url):
    """Another server on PORTAL_BIND: one clear line and exit 1, not gunicorn's traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "GUNICORN_"))}
        env.update({"PORTAL_INSTANCE_PATH": str(tmp_path / "instance"),
                    "PORTAL_BIND": f"127.0.0.1:{port}", "PORTAL_REDIS_URL": redis_url,
                    "PORTAL_DEMO_BIG_FILE_MB": "1",
                    "PORTAL_PASSWORD_HASH_METHOD": "scrypt:1024:8:1"})
        done = subprocess.run(["bash", "scripts/run.sh"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert f"run.sh: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "PORTAL_BIND=" in done.stderr and "Traceback" not in done.stderr
