"""The portal as a wheel (what ``pip install .`` and the container image install): built from
the checkout, installed into a folder of its own and run from outside the repository, it
finds its templates, static files, migrations and gunicorn.conf.py inside the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from servers import ROOT, request, stop_process

from portal import assetbuild
from tests.helpers import free_port, wait_for

pytestmark = pytest.mark.slow


#: What a build reads (the Containerfile's context, .dockerignore).
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "gunicorn.conf.py", "portal", "templates",
           "static", "migrations")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel --no-deps`` of a copy of the checkout's sources (a build writes build/)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "-w", str(out), str(source)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    (found,) = out.glob("campus_portal-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict[str, str]:
    """The wheel unpacked into a folder put first on PYTHONPATH (the dependencies are the
    test venv's): the environment of a process that runs the installed portal, from /tmp."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "GUNICORN_"))}
    return {**env, "PYTHONPATH": str(target), "PATH": f"{target / 'bin'}:{env['PATH']}",
            "PORTAL_INSTANCE_PATH": str(tmp_path_factory.mktemp("instance")),
            "PORTAL_REDIS_URL": "redis://127.0.0.1:9/0", "PORTAL_GUNICORN_WORKERS": "1"}


def portal(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``campus-portal ARGS`` (the wheel's console script) run in /tmp."""
    return subprocess.run([sys.executable, str(Path(env["PYTHONPATH"]) / "bin" / "campus-portal"),
                           *args], cwd="/tmp", env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_the_wheel_carries_what_the_checkout_keeps_at_its_top_level(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("templates/base.html", "static/css/portal.css", "migrations/env.py",
                 "migrations/alembic.ini", "gunicorn.conf.py", "wsgi.py", "serve.py"):
        assert f"portal/{path}" in names, path
    assert not [name for name in names if "__pycache__" in name]
    # static/ built: hashed names with gzip copies (setup.py, portal/assetbuild.py)
    assert "portal/static-built/manifest.json" in names
    assert "portal/static-built/" + hashed("css/portal.css") + ".gz" in names
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "campus-portal = portal.serve:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_it_migrates_and_serves_from_its_own_files(installed):
    upgraded = portal(installed, "migrate")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "Running upgrade  -> 0001_initial" in upgraded.stderr
    made = portal(installed, "user", "create", "wheel-admin", "--password", "wheel-pass-1",
                  "--role", "admin")
    assert made.returncode == 0, made.stderr

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(Path(installed["PYTHONPATH"]) / "bin" / "campus-portal"), "serve",
         "--bind", f"127.0.0.1:{port}"], cwd="/tmp", env=installed,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def login_page():
            try:
                return request(f"http://127.0.0.1:{port}", "GET", "/login", timeout=2)
            except OSError:
                assert server.poll() is None, server.stderr.read()
                return None

        status, _, body = wait_for(login_page, what="the installed portal serving")
        assert status == 200 and b'name="csrf-token"' in body  # templates/
        status, _, css = request(f"http://127.0.0.1:{port}", "GET", "/static/css/portal.css")
        assert status == 200 and css == (ROOT / "static" / "css" / "portal.css").read_bytes()
        status, headers, _ = request(f"http://127.0.0.1:{port}", "GET",
                                     "/static/" + hashed("css/portal.css"),
                                     headers={"Accept-Encoding": "gzip"})
        assert status == 200 and headers["Content-Encoding"] == "gzip"  # the wheel's build
        # the analytics flusher gunicorn.conf.py starts beside the workers (`flask --app
        # wsgi` in the package's folder) keeps running
        flusher = wait_for(lambda: flusher_of(server.pid), what="the analytics flusher")
        time.sleep(3)
        assert flusher_of(server.pid) == flusher
        server.terminate()
        server.wait(30)
        assert "analytics flusher exited" not in server.stderr.read()
    finally:
        stop_process(server)


def hashed(name: str) -> str:
    """The content-hashed name of static/``name``."""
    return assetbuild.hashed_name(name, (ROOT / "static" / name).read_bytes())


def flusher_of(pid: int) -> str:
    """The pid of the analytics flusher gunicorn's master ``pid`` started ('' for none)."""
    done = subprocess.run(["pgrep", "-P", str(pid), "-f", "analytics flush"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip()
