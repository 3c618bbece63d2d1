"""The portal's static assets: hashed URLs in pages, long-lived caching, precompressed bodies.

- ``url_for('static', filename='js/portal.js')`` gives ``/static/js/portal.<hash>.js``
  (assetbuild.hashed_name), from a map of the static folder made as the app starts, so a
  page always names the content the folder holds now. ``hashed=False`` gives the plain URL
  (a redirect that browsers keep, such as /favicon.ico's).
- WhiteNoise answers /static/ in front of Flask: a hashed URL with ``Cache-Control: public,
  max-age=31536000, immutable``, a plain one with ``no-cache`` and validators (If-None-Match
  and If-Modified-Since get 304), each with the page's security headers. Where a built tree
  is fresh (``flask static build``: assetbuild.build) its ``.gz`` (and ``.br``) copies are sent
  to clients whose Accept-Encoding takes them, with ``Vary: Accept-Encoding``; otherwise the
  static folder is served as it is, uncompressed (a checkout whose static/ changed since).
- The built tree the app uses: ``<instance>/static-built`` (``flask static build``, run by
  scripts/run.sh), else the one the wheel carries (setup.py), whichever matches static/.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import click
from flask import Flask
from flask.cli import AppGroup
from werkzeug.http import parse_accept_header
from whitenoise import WhiteNoise

from . import assetbuild, bundled
from .security import _PAGE_HEADERS, HSTS  # the same page policy as Flask's answers

log = logging.getLogger(__name__)

#: What a hashed URL may be kept for, by the browser and any cache on the way.
IMMUTABLE = "public, max-age=31536000, immutable"
#: A plain URL: kept, but asked about (a 304 when unchanged) before every use.
REVALIDATE = "no-cache"
#: Where a build goes, inside the instance folder and inside the installed package.
BUILT = "static-built"

static_cli = AppGroup("static", help="Static assets: hashed names, compressed copies.")


class StaticAssets(WhiteNoise):
    """WhiteNoise for /static/ with the portal's caching rule and security headers."""

    def __init__(self, application, *, plain_urls: frozenset[str], production: bool) -> None:
        self.plain_urls = plain_urls
        self.production = production
        self.etags: dict[str, str] = {}
        super().__init__(application, allow_all_origins=False,
                         add_headers_function=self.add_portal_headers)

    def add_cache_headers(self, headers, path, url) -> None:
        """Hashed URLs are kept a year untouched; plain ones are revalidated on each use."""
        headers["Cache-Control"] = REVALIDATE if url in self.plain_urls else IMMUTABLE

    def add_portal_headers(self, headers, path, url) -> None:
        """The page headers (portal/security.py), and an ETag from the content.

        WhiteNoise's own ETag is the file's mtime and size, which differ between nodes
        installed at different times. Weak: the gzip and the plain body share it."""
        for name, value in _PAGE_HEADERS:
            headers[name] = value
        if self.production:
            headers["Strict-Transport-Security"] = HSTS
        if path not in self.etags:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:20]
            self.etags[path] = f'W/"{digest}"'
        headers["ETag"] = self.etags[path]

    @staticmethod
    def serve(static_file, environ, start_response):
        """WhiteNoise's answer, for the codings the client really accepts: WhiteNoise looks
        for the word ``gzip`` and would send it against ``gzip;q=0``."""
        accepted = parse_accept_header(environ.get("HTTP_ACCEPT_ENCODING", ""))
        environ["HTTP_ACCEPT_ENCODING"] = ", ".join(
            value for value, quality in accepted if quality > 0 and value != "*")
        return WhiteNoise.serve(static_file, environ, start_response)


def fresh_build(app: Flask, names: dict[str, str]) -> Path | None:
    """The first built tree whose manifest is this static folder's map, None for none."""
    for built in (Path(app.instance_path) / BUILT, bundled(BUILT)):
        if assetbuild.read_manifest(built) == names:
            return built
    return None


def register(app: Flask) -> None:
    """Hashed names in ``url_for('static')``, /static/ answered by StaticAssets in front of
    ``app.wsgi_app`` (call before the download fast path wraps it), ``flask static``."""
    source = Path(app.static_folder)
    names = assetbuild.digest_map(source)
    prefix = app.static_url_path.rstrip("/") + "/"

    @app.url_defaults
    def hashed_static(endpoint: str, values: dict) -> None:
        if endpoint == "static" and values.pop("hashed", True) and "filename" in values:
            values["filename"] = names.get(values["filename"], values["filename"])

    assets = StaticAssets(app.wsgi_app, plain_urls=frozenset(prefix + n for n in names),
                          production=app.config["ENV"] == "production")
    built = fresh_build(app, names)
    if built is not None:
        assets.add_files(str(built), prefix)
        assets.files.pop(prefix + assetbuild.MANIFEST, None)
    else:
        log.info("static assets: no build of %s (flask static build); served uncompressed",
                 source)
        for name, hashed in names.items():
            for url in (prefix + name, prefix + hashed):
                assets.add_file_to_dictionary(url, str(source / name))
    app.extensions["portal_static_built"] = built
    app.wsgi_app = assets
    app.cli.add_command(static_cli)


@static_cli.command("build")
@click.option("--to", "target", type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write (default: <instance>/static-built, which the portal "
                   "serves; nginx's /static/ folder for deploy/nginx.conf).")
def static_build(target: Path | None) -> None:
    """Write the static assets under their hashed and plain names with .gz copies."""
    from flask import current_app

    target = target or Path(current_app.instance_path) / BUILT
    stats = assetbuild.build(Path(current_app.static_folder), target)
    click.echo(f"static build: {stats['files']} files ({stats['bytes']} bytes) into {target}; "
               f"text {stats['text_bytes']} bytes, gzip {stats['gzip_bytes']} bytes")
