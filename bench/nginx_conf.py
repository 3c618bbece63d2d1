"""deploy/nginx.conf rendered for a run on loopback: which production literals it holds and
what a run puts in their place.

The functional tests (tests/servers.py, nginx in front of a test gunicorn) and the x-accel
benchmark (bench/download_harness.py) both run the production config; this is the one
renderer they share, so that the list of literals cannot drift between them. It lives under
bench/ and uses the standard library only because bench must not import from tests/ (nor
load the portal); the tests import it as ``bench.nginx_conf``, the bench scripts, which run
with bench/ on sys.path, as ``nginx_conf``.
"""

from __future__ import annotations

from pathlib import Path

DEPLOY_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"

# The literal production values in deploy/nginx.conf that a run replaces. Each must occur in
# the file, so a config edit that breaks the rendering fails loudly.
PLACEHOLDERS = (
    "user www-data;",
    "pid /run/nginx.pid;",
    "/var/log/nginx/",
    "/var/cache/nginx/",
    "server 127.0.0.1:8000",
    "listen 80;",
    "/srv/portal/storage/objects/",
    "/srv/portal/static/",
    "/srv/portal/error-pages/",
    "http {",
)

TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class ConfDrift(ValueError):
    """deploy/nginx.conf no longer contains a literal that the rendering replaces."""


def render_deploy_conf(text: str, *, port: int, upstream_port: int, storage: Path,
                       pid: Path | str, log_prefix: str, cache_prefix: str,
                       user: str | None = None, temp_dir: Path | None = None,
                       static: Path | None = None, error_pages: Path | None = None) -> str:
    """``text`` (deploy/nginx.conf) listening on 127.0.0.1:``port`` in front of the portal on
    127.0.0.1:``upstream_port``, serving the objects under ``storage``.

    ``log_prefix`` and ``cache_prefix`` take the place of ``/var/log/nginx/`` and
    ``/var/cache/nginx/`` (a folder with its slash, or a folder and a file-name prefix);
    ``user`` names the workers' OS user (None: the line goes, nginx keeps the user it runs
    as); ``temp_dir`` puts every ``*_temp_path`` below that folder (None: nginx's defaults);
    ``static`` is the folder of built static assets (None: one that holds nothing, so nginx
    passes /static/ to the portal); ``error_pages`` is the folder of the portal's error pages
    (``flask error-pages``; None: the production folder stays, and an error nginx answers
    itself is then a 404).
    Raises ConfDrift when a literal of PLACEHOLDERS is missing.
    """
    missing = [literal for literal in PLACEHOLDERS if literal not in text]
    if missing:
        raise ConfDrift("deploy/nginx.conf no longer contains "
                        + ", ".join(repr(literal) for literal in missing))
    rendered = (text.replace("user www-data;", f"user {user};" if user else "")
                .replace("pid /run/nginx.pid;", f"pid {pid};")
                .replace("/var/log/nginx/", log_prefix)
                .replace("/var/cache/nginx/", cache_prefix)
                .replace("server 127.0.0.1:8000", f"server 127.0.0.1:{upstream_port}")
                .replace("listen 80;", f"listen 127.0.0.1:{port};")
                .replace("/srv/portal/storage/objects/", f"{storage / 'objects'}/")
                .replace("/srv/portal/static/", f"{static or storage / 'no-static'}/"))
    if error_pages is not None:
        rendered = rendered.replace("/srv/portal/error-pages/", f"{error_pages}/")
    if temp_dir is not None:
        temps = "".join(f"    {kind}_temp_path {temp_dir / kind};\n" for kind in TEMP_KINDS)
        rendered = rendered.replace("http {", "http {\n" + temps, 1)
    return rendered
