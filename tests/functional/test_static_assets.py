"""Static assets (portal/assets.py, portal/assetbuild.py): pages name them by content, a hashed
URL is kept a year, a plain one is revalidated, and a built tree's gzip copies are sent to
clients that take gzip -- by the portal itself and by nginx (deploy/nginx.conf)."""

from __future__ import annotations

import contextlib
import gzip
import json
import re
from pathlib import Path

import pytest
from servers import ROOT, Gunicorn, Nginx, request, require_tool

from portal import assetbuild
from portal.assets import IMMUTABLE, REVALIDATE

STATIC = ROOT / "static"
CHART = "vendor/chartjs/chart.umd.min.js"
HASHED_URL = re.compile(r'/static/[^"\']+\.[0-9a-f]{12}\.[a-z]+')


def hashed(name: str) -> str:
    """The URL a page uses for static/``name``."""
    return "/static/" + assetbuild.hashed_name(name, (STATIC / name).read_bytes())


def built_app(make_app, config) -> object:
    """An app whose instance folder holds a fresh ``flask static build``."""
    assetbuild.build(STATIC, Path(config["INSTANCE_PATH"]) / "static-built")
    app = make_app()
    assert app.extensions["portal_static_built"] is not None
    return app


def test_pages_name_every_asset_by_its_content(client):
    page = client.get("/login").get_data(as_text=True)
    assert hashed("css/portal.css") in page and hashed("favicon.svg") in page
    names = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert names and all(HASHED_URL.fullmatch(name) for name in names), names
    # /favicon.ico's permanent redirect names the icon, not one content of it
    favicon = client.get("/favicon.ico")
    assert favicon.status_code == 301 and favicon.headers["Location"].endswith(
        "/static/favicon.svg")


def test_hashed_urls_are_kept_a_year_plain_ones_are_revalidated(client):
    with client.get(hashed("js/portal.js")) as resp:
        assert resp.status_code == 200
        assert resp.headers["Cache-Control"] == IMMUTABLE
        assert resp.get_data() == (STATIC / "js/portal.js").read_bytes()
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Content-Type"].startswith("text/javascript")
    with client.get("/static/js/portal.js") as resp:
        assert resp.status_code == 200 and resp.headers["Cache-Control"] == REVALIDATE
        etag, modified = resp.headers["ETag"], resp.headers["Last-Modified"]
    with client.get("/static/js/portal.js", headers={"If-None-Match": etag}) as again:
        assert again.status_code == 304 and again.get_data() == b""
        assert again.headers["ETag"] == etag and again.headers["Cache-Control"] == REVALIDATE
    with client.get("/static/js/portal.js", headers={"If-Modified-Since": modified}) as again:
        assert again.status_code == 304
    # the validator is the content's (nodes installed at other times agree on it)
    with client.get(hashed("js/portal.js")) as resp:
        assert resp.headers["ETag"] == etag
    assert client.get("/static/js/no-such.js").status_code == 404


def test_a_build_is_sent_gzipped_to_clients_that_take_it(make_app, config):
    client = built_app(make_app, config).test_client()
    source = (STATIC / CHART).read_bytes()
    with client.get(hashed(CHART), headers={"Accept-Encoding": "gzip, deflate, br"}) as resp:
        assert resp.status_code == 200 and resp.headers["Content-Encoding"] in ("gzip", "br")
        assert resp.headers["Vary"] == "Accept-Encoding"
        assert resp.headers["Cache-Control"] == IMMUTABLE
        body = resp.get_data()
        assert int(resp.headers["Content-Length"]) == len(body) < len(source) / 2
        if resp.headers["Content-Encoding"] == "gzip":
            assert gzip.decompress(body) == source
    for accept in ("gzip", "x-gzip, identity"):
        with client.get(hashed(CHART), headers={"Accept-Encoding": accept}) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(resp.get_data()) == source
    for accept in (None, "identity", "gzip;q=0", "deflate"):
        headers = {"Accept-Encoding": accept} if accept else {}
        with client.get(hashed(CHART), headers=headers) as resp:
            assert "Content-Encoding" not in resp.headers, accept
            assert resp.headers["Vary"] == "Accept-Encoding"
            assert resp.get_data() == source
    # the plain name: compressed too, revalidated, and its 304 still says what varies
    with client.get("/static/" + CHART, headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["Cache-Control"] == REVALIDATE
        etag = resp.headers["ETag"]
    with client.get("/static/" + CHART, headers={"Accept-Encoding": "gzip",
                                                 "If-None-Match": etag}) as resp:
        assert resp.status_code == 304 and resp.headers["Vary"] == "Accept-Encoding"
    assert client.get("/static/manifest.json").status_code == 404
    # HEAD: the headers of the body it would send
    with client.head(hashed(CHART), headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.status_code == 200 and resp.headers["Content-Encoding"] == "gzip"


def test_a_build_that_does_not_match_static_is_not_used(make_app, config):
    built = Path(config["INSTANCE_PATH"]) / "static-built"
    assetbuild.build(STATIC, built)
    manifest = json.loads((built / assetbuild.MANIFEST).read_text())
    manifest["files"]["js/portal.js"] = "js/portal.000000000000.js"  # an older static/
    (built / assetbuild.MANIFEST).write_text(json.dumps(manifest))
    app = make_app()
    assert app.extensions["portal_static_built"] is None
    with app.test_client().get(hashed("js/portal.js"),
                               headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.status_code == 200 and "Content-Encoding" not in resp.headers
        assert resp.get_data() == (STATIC / "js/portal.js").read_bytes()


def test_the_build_command_writes_what_the_next_start_serves(app, runner, make_app, config):
    assert app.extensions["portal_static_built"] is None  # nothing built yet
    result = runner.invoke(args=["static", "build"])
    assert result.exit_code == 0, result.output
    assert "static build:" in result.output and "gzip" in result.output
    built = Path(config["INSTANCE_PATH"]) / "static-built"
    name = assetbuild.hashed_name(CHART, (STATIC / CHART).read_bytes())
    for path in (CHART, CHART + ".gz", name, name + ".gz"):
        assert (built / path).is_file(), path
    assert make_app().extensions["portal_static_built"] == built
    # a second build keeps the files and the manifest as they were (reproducible gzip)
    before = (built / (name + ".gz")).read_bytes()
    assert runner.invoke(args=["static", "build"]).exit_code == 0
    assert (built / (name + ".gz")).read_bytes() == before


# ---------------------------------------------------------------------------
# Through nginx (deploy/nginx.conf)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(portal_instance, tmp_path_factory):
    """gunicorn, and nginx in front of it with a built static folder of its own."""
    require_tool("nginx")
    folder = tmp_path_factory.mktemp("nginx-static") / "static"
    portal_instance.flask("static", "build", "--to", str(folder))
    backend = Gunicorn(portal_instance, workers=1)
    with contextlib.ExitStack() as running:
        running.enter_context(backend)
        nginx = running.enter_context(
            Nginx(tmp_path_factory.mktemp("nginx"), backend, static=folder))
        yield nginx.base_url, folder


@pytest.mark.slow
def test_nginx_sends_the_build_gzipped_and_cached(site):
    base, _ = site
    source = (STATIC / CHART).read_bytes()
    status, headers, body = request(base, "GET", hashed(CHART),
                                    headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == source
    assert headers["Vary"] == "Accept-Encoding"
    assert headers.get_all("Cache-Control") == [IMMUTABLE]
    assert headers["Content-Type"].startswith("text/javascript")
    assert headers["X-Content-Type-Options"] == "nosniff"
    # from nginx's folder, not the portal: nginx's strong ETag, no page CSP
    assert not headers["ETag"].startswith("W/") and "Content-Security-Policy" not in headers
    status, headers, body = request(base, "GET", hashed(CHART))
    assert status == 200 and "Content-Encoding" not in headers and body == source
    # a plain name: revalidated, 304 with nginx's validator
    status, headers, _ = request(base, "GET", "/static/css/portal.css",
                                 headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get_all("Cache-Control") == [REVALIDATE]
    status, again, _ = request(base, "GET", "/static/css/portal.css",
                               headers={"Accept-Encoding": "gzip",
                                        "If-None-Match": headers["ETag"]})
    assert status == 304 and again.get_all("Cache-Control") == [REVALIDATE]
    # the pages nginx passes on name the same hashed URLs
    status, _, page = request(base, "GET", "/login")
    assert status == 200 and hashed("css/portal.css").encode() in page


@pytest.mark.slow
def test_nginx_passes_what_its_folder_lacks_to_the_portal(site):
    base, folder = site
    name = hashed("js/analytics.js")
    for path in folder.glob("js/analytics.*"):
        path.unlink()  # a folder built before this asset changed
    status, headers, body = request(base, "GET", name, headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["ETag"].startswith("W/")  # the portal's answer
    assert headers.get_all("Cache-Control") == [IMMUTABLE]
    assert body == (STATIC / "js/analytics.js").read_bytes() or gzip.decompress(body) == (
        STATIC / "js/analytics.js").read_bytes()
    assert len(headers.get_all("X-Content-Type-Options")) == 1
