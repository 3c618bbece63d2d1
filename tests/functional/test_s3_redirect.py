"""PORTAL_S3_DELIVERY=redirect against a real S3 server (rclone serve s3): the portal
authorises and evaluates the request, records the event, then answers 302 to a presigned URL
that real clients (curl -L, requests) follow to rclone.

What rclone 1.75 really does with a presigned GET (checked here, relied on in docs/s3.md):
it honours ``response-content-disposition`` and ``response-content-type``; it serves one byte
range but with status 200 plus a correct Content-Range (AWS and MinIO say 206); it answers
several ranges with 501; it refuses a HEAD of a URL signed for GET (403); its ETag is the MD5
of the content, not the portal's SHA-256.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import s3server
from servers import (
    Browser,
    Gunicorn,
    make_instance,
    parse_byteranges,
    request,
    require_tool,
    sha256_file,
    write_random,
)
from sqlalchemy import select
from werkzeug.serving import make_server

from portal import ConfigError, create_app
from portal.analytics.recorder import recorder
from portal.download import http
from portal.download.http import is_single_byte_range as _single_byte_range
from portal.download.plan import RequestFacts, s3_agrees
from portal.extensions import db
from portal.files import add_version
from portal.models import DownloadEvent
from portal.storage import get_storage

s3_server = s3server.s3_server  # the fixtures, used by name
s3_env = s3server.s3_env

ROOT = Path(__file__).resolve().parents[2]
NAME = "课程表 2024秋季.pdf"


@pytest.fixture
def config(config, s3_env):
    """Redirect mode on a fresh bucket; the hot-file cache off unless a test turns it on
    (with it on, the second request for a version would fill it and be served from Redis)."""
    config.update(STORAGE_URL=s3_env["url"], S3_DELIVERY="redirect", S3_PRESIGN_SECONDS=120,
                  CACHE_HOT_ENABLED=False)
    return config


@pytest.fixture
def live(app):
    """The same app behind a real HTTP server (werkzeug, threaded) for curl and requests."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)
    server.server_close()


def add(app, data: bytes, *, name: str = NAME, access: str = "public") -> int:
    """Store a file through the normal path; returns its id."""
    with app.app_context():
        version = add_version(db.session, get_storage(), io.BytesIO(data), filename=name,
                              title=name.rsplit(".", 1)[0], access=access)
        db.session.commit()
        return version.file_id


def events(app) -> list[DownloadEvent]:
    """Every download event, after flushing the Redis buffer to SQL."""
    recorder(app).flush()
    with app.app_context():
        rows = db.session.scalars(select(DownloadEvent).order_by(DownloadEvent.id)).all()
        db.session.expunge_all()
        return rows


def etag_of(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


def assert_presigned(location: str, s3_env: dict, data: bytes, name: str = NAME,
                     mime: str = "application/pdf") -> dict[str, str]:
    """The Location is a SigV4 presigned GET of the content's object carrying the portal's
    download headers; returns its query."""
    parts = urllib.parse.urlsplit(location)
    key = hashlib.sha256(data).hexdigest()
    assert f"{parts.scheme}://{parts.netloc}" == s3_env["AWS_ENDPOINT_URL_S3"]
    assert parts.path == f"/{s3_env['bucket']}/portal/objects/{key[:2]}/{key[2:4]}/{key}"
    query = dict(urllib.parse.parse_qsl(parts.query))
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and query["X-Amz-Signature"]
    assert query["X-Amz-Expires"] == "120"
    assert query["response-content-disposition"] == http.content_disposition(name)
    assert query["response-content-type"] == mime
    return query


def test_redirect_to_a_presigned_url(app, client, s3_env):
    data = os.urandom(300_000)
    file_id = add(app, data)
    resp = client.get(f"/files/{file_id}/download")
    assert resp.status_code == 302
    assert resp.headers["Cache-Control"] == "private, no-store"
    assert "ETag" not in resp.headers and "Content-Disposition" not in resp.headers
    assert_presigned(resp.headers["Location"], s3_env, data)

    ranged = client.get(f"/files/{file_id}/download", headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 302
    assert_presigned(ranged.headers["Location"], s3_env, data)


def test_curl_follows_the_redirect(app, live, tmp_path):
    require_tool("curl")
    data = os.urandom(300_000)
    file_id = add(app, data)
    url = f"{live}/files/{file_id}/download"
    disposition = http.content_disposition(NAME)

    def curl(*args: str) -> tuple[list[str], bytes]:
        out, dump = tmp_path / "body", tmp_path / "headers"
        subprocess.run(["curl", "-sS", "--fail", "-L", "-D", str(dump), "-o", str(out), *args,
                        url], check=True, timeout=60)
        return dump.read_bytes().decode("latin-1").split("\r\n\r\n"), out.read_bytes()

    blocks, body = curl()
    assert blocks[0].startswith("HTTP/1.1 302")
    assert "Cache-Control: private, no-store" in blocks[0]
    final = blocks[1]
    assert final.startswith("HTTP/1.1 200")
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    # rclone honours response-content-disposition: the portal's RFC 8187 header, verbatim
    assert f"Content-Disposition: {disposition}\r\n" in final
    assert "Content-Type: application/pdf\r\n" in final

    blocks, body = curl("-r", "100-199")
    assert blocks[0].startswith("HTTP/1.1 302")
    assert body == data[100:200]
    # rclone answers a range 200 with a correct Content-Range (AWS and MinIO: 206)
    assert blocks[1].split("\r\n", 1)[0] in ("HTTP/1.1 200 OK", "HTTP/1.1 206 Partial Content")
    assert f"Content-Range: bytes 100-199/{len(data)}\r\n" in blocks[1]


def test_requests_follows_the_redirect_of_both_routes(app, client, live, make_user, login):
    make_user("alice")
    data = os.urandom(200_000)
    file_id = add(app, data, access="user:alice")
    csrf = login("alice")
    link = client.post(f"/api/files/{file_id}/links", json={},
                       headers={"X-CSRFToken": csrf}).get_json()["url"]
    link_path = urllib.parse.urlsplit(link).path
    assert link_path.startswith("/d/")

    for path in (f"/files/{file_id}/download", link_path):
        if path.startswith("/files/"):  # the session cookie of the signed-in test client
            cookie = client.get_cookie("session")
            headers = {"Cookie": f"session={cookie.value}"}
        else:
            headers = {}
        resp = requests.get(live + path, headers=headers, timeout=30)
        assert [r.status_code for r in resp.history] == [302]
        assert resp.status_code == 200
        assert hashlib.sha256(resp.content).hexdigest() == hashlib.sha256(data).hexdigest()
        assert resp.headers["Content-Disposition"] == http.content_disposition(NAME)
        # the documented trade-off: after the redirect the client sees S3's ETag (rclone:
        # the MD5), not the portal's SHA-256 ETag
        assert resp.headers["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
        assert resp.headers["ETag"] != etag_of(data)

        part = requests.get(live + path, headers={**headers, "Range": "bytes=100-199"},
                            timeout=30)
        assert [r.status_code for r in part.history] == [302]
        assert part.content == data[100:200]
        assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"

        # a resume validated with S3's ETag goes to S3, which checks it against its own
        resumed = requests.get(live + path, timeout=30, headers={
            **headers, "Range": "bytes=1000-", "If-Range": resp.headers["ETag"]})
        assert [r.status_code for r in resumed.history] == [302]
        assert resumed.content == data[1000:]


def test_one_event_per_redirect(app, client):
    data = os.urandom(50_000)
    file_id = add(app, data)
    full = client.get(f"/files/{file_id}/download")
    part = client.get(f"/files/{file_id}/download", headers={"Range": "bytes=100-199"})
    assert (full.status_code, part.status_code) == (302, 302)
    # the client fetching the URL from S3 does not involve the portal
    assert requests.get(full.headers["Location"], timeout=30).content == data
    rows = events(app)
    assert len(rows) == 2
    assert [(r.status, r.bytes_sent, r.served_from, r.method) for r in rows] == [
        (200, -1, "s3", "GET"), (206, -1, "s3", "GET")]
    assert rows[1].range_header == "bytes=100-199"
    assert all(r.ended_at is not None and r.version_id for r in rows)


def test_preconditions_and_head_are_answered_by_the_portal(app, client):
    data = os.urandom(60_000)
    file_id = add(app, data)
    url = f"/files/{file_id}/download"
    etag = etag_of(data)

    head = client.head(url)
    assert head.status_code == 200 and "Location" not in head.headers
    assert head.headers["ETag"] == etag
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["Content-Disposition"] == http.content_disposition(NAME)

    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert client.get(url, headers={"If-Match": '"other"'}).status_code == 412
    unsatisfiable = client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["Content-Range"] == f"bytes */{len(data)}"
    head.close()
    assert events(app) == []  # HEAD, 304, 412 and 416 are not downloads


@pytest.mark.parametrize("headers,status", [
    # several ranges: S3 servers cannot build multipart/byteranges (rclone: 501)
    ({"Range": "bytes=0-9,1000-1009"}, 206),
    # revalidations S3 would judge against its own validators
    ({"If-None-Match": '"other"'}, 200),
    ({"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"}, 200),
    ({"If-Match": "*"}, 200),
    # a resume the portal validated with its own ETag: S3 would not match it
    ({"Range": "bytes=1000-", "If-Range": "ETAG"}, 206),
    # a date If-Range could match S3's older object time
    ({"Range": "bytes=1000-", "If-Range": "Sat, 01 Jan 2000 00:00:00 GMT"}, 200),
    # a Range the portal ignores: S3 might not
    ({"Range": "bytes=abc"}, 200),
])
def test_what_s3_would_judge_differently_is_served_by_the_portal(app, client, headers, status):
    data = os.urandom(60_000)
    file_id = add(app, data)
    headers = {k: v.replace("ETAG", etag_of(data)) for k, v in headers.items()}
    resp = client.get(f"/files/{file_id}/download", headers=headers)
    assert resp.status_code == status and "Location" not in resp.headers
    assert resp.headers["ETag"] == etag_of(data)
    if status == 200:
        assert resp.data == data
    elif resp.mimetype == "multipart/byteranges":
        parts = parse_byteranges(resp.data, resp.headers["Content-Type"])
        assert [body for _, body in parts] == [data[0:10], data[1000:1010]]
    else:
        assert resp.data == data[1000:]
    resp.close()
    assert [(r.status, r.served_from) for r in events(app)] == [(status, "origin")]


def test_rclone_really_refuses_multirange_and_head_on_a_presigned_url(app, client):
    """Why the portal keeps those: checked against the real server, not assumed."""
    data = os.urandom(5_000)
    file_id = add(app, data)
    location = client.get(f"/files/{file_id}/download").headers["Location"]
    multi = requests.get(location, headers={"Range": "bytes=0-9,100-109"}, timeout=30)
    assert multi.status_code == 501
    assert requests.head(location, timeout=30).status_code == 403


def test_presigned_url_expires(app, client):
    app.config["S3_PRESIGN_SECONDS"] = 1
    data = os.urandom(5_000)
    file_id = add(app, data)
    location = client.get(f"/files/{file_id}/download").headers["Location"]
    assert "X-Amz-Expires=1&" in location
    time.sleep(2.5)
    expired = requests.get(location, timeout=30)
    assert expired.status_code in (400, 403) and expired.content != data
    # the portal URL itself stays good: it signs a fresh URL each time
    fresh = client.get(f"/files/{file_id}/download").headers["Location"]
    assert requests.get(fresh, timeout=30).content == data


def test_refusals_are_unchanged(app, client, make_user, login):
    make_user("alice")
    make_user("bob")
    data = os.urandom(10_000)
    file_id = add(app, data, name="成绩单.pdf", access="user:alice")
    url = f"/files/{file_id}/download"

    anonymous = client.get(url)
    assert anonymous.status_code == 302
    assert urllib.parse.urlsplit(anonymous.headers["Location"]).path == "/login"

    csrf = login("alice")
    link = client.post(f"/api/files/{file_id}/links", json={},
                       headers={"X-CSRFToken": csrf}).get_json()["url"]
    login("bob")
    refused = client.get(url)
    assert refused.status_code == 404 and "Location" not in refused.headers
    tampered = urllib.parse.urlsplit(link).path.replace("/d/", "/d/x", 1)
    bad = client.get(tampered)
    assert bad.status_code == 403 and "Location" not in bad.headers
    assert events(app) == []


def test_a_hot_version_is_served_from_the_cache(app, client):
    app.config.update(CACHE_HOT_ENABLED=True, CACHE_HOT_MIN_HITS=2)
    data = os.urandom(80_000)
    file_id = add(app, data)
    url = f"/files/{file_id}/download"
    first = client.get(url)  # one hit: not admitted, S3 sends it
    assert first.status_code == 302
    second = client.get(url)  # the second hit fills the cache and is served from it
    assert second.status_code == 200 and second.data == data and "Location" not in second.headers
    third = client.get(url, headers={"Range": "bytes=100-199"})
    assert third.status_code == 206 and third.data == data[100:200]
    assert third.headers["ETag"] == etag_of(data)
    for resp in (second, third):
        resp.close()
    assert [(r.status, r.bytes_sent) for r in events(app)] == [(200, -1), (200, len(data)),
                                                              (206, 100)]


def test_active_content_is_not_redirected(app, client):
    data = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"
    file_id = add(app, data, name="logo.svg")
    resp = client.get(f"/files/{file_id}/download")
    assert resp.status_code == 200 and resp.data == data
    assert resp.headers["Content-Security-Policy"].startswith("sandbox")
    resp.close()


def test_proxy_mode_is_unchanged(app, client):
    app.config["S3_DELIVERY"] = "proxy"
    data = os.urandom(70_000)
    file_id = add(app, data)
    resp = client.get(f"/files/{file_id}/download", headers={"Range": "bytes=100-199"})
    assert resp.status_code == 206 and resp.data == data[100:200]
    assert "Location" not in resp.headers and resp.headers["ETag"] == etag_of(data)
    resp.close()
    assert [(r.status, r.bytes_sent, r.served_from) for r in events(app)] == [
        (206, 100, "origin")]


# ---------------------------------------------------------------------------
# Settings and the pure decision
# ---------------------------------------------------------------------------


def test_redirect_needs_s3_storage(config, tmp_path):
    config["STORAGE_URL"] = (tmp_path / "files").as_uri()
    with pytest.raises(ConfigError, match="needs an s3:// PORTAL_STORAGE_URL"):
        create_app(config)


def test_cli_config_error_is_one_line(tmp_path):
    env = dict(os.environ, PORTAL_S3_DELIVERY="sideways", PORTAL_INSTANCE_PATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("portal: configuration error: PORTAL_S3_DELIVERY must be "
                                   "'proxy' or 'redirect', not 'sideways'")


@pytest.mark.parametrize("value,single", [
    ("bytes=0-", True), ("bytes=100-199", True), ("bytes=-500", True), (" Bytes = 5-9 ", True),
    ("bytes=0-9,20-29", False), ("bytes=-", False), ("bytes=a-9", False), ("bytes=5", False),
    ("items=0-9", False), ("bytes=１-2", False), ("", False),
])
def test_single_byte_range(value, single):
    assert _single_byte_range(value) is single


def _decision(status: int, ranges=()) -> http.Decision:
    rep = http.Representation(size=1000, etag="e", content_type="application/pdf",
                              last_modified=datetime(2024, 9, 1, tzinfo=UTC))
    headers = {"Range": f"bytes={ranges[0][0]}-{ranges[0][1] - 1}"} if ranges else {}
    decision = http.evaluate("GET", headers, rep)
    assert decision.status == status
    return decision


@pytest.mark.parametrize("headers,status,ranges,agrees", [
    ({}, 200, (), True),
    ({"Range": "bytes=0-9"}, 206, ((0, 10),), True),
    ({"Range": "bytes=0-9", "If-Range": '"s3-etag"'}, 200, (), True),
    ({"Range": "bytes=0-9", "If-Range": '"e"'}, 206, ((0, 10),), False),
    ({"Range": "bytes=0-9", "If-Range": 'W/"e"'}, 200, (), False),
    ({"Range": "bytes=0-9", "If-Range": "Sat, 01 Jan 2000 00:00:00 GMT"}, 200, (), False),
    ({"Range": "bytes=0-9,20-29", "If-Range": '"s3-etag"'}, 200, (), False),
    ({"Range": "bytes=abc"}, 200, (), False),
    ({"If-Range": '"x"'}, 200, (), True),
    ({"If-None-Match": '"x"'}, 200, (), False),
    ({"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"}, 200, (), False),
    ({"If-Match": "*"}, 200, (), False),
    ({"If-Unmodified-Since": "Sat, 01 Jan 2050 00:00:00 GMT"}, 200, (), False),
])
def test_s3_agrees(headers, status, ranges, agrees):
    assert s3_agrees(_decision(status, ranges), RequestFacts("GET", headers)) is agrees


def test_x_accel_events_are_still_nginx(config, tmp_path):
    """The recorder keeps "nginx" for -1 when the path named no other sender."""
    config.update(STORAGE_URL=(tmp_path / "files").as_uri(), S3_DELIVERY="proxy",
                  SENDFILE="x-accel")
    local = create_app(config)
    try:
        with local.app_context():
            db.create_all()
        file_id = add(local, os.urandom(1_000))
        resp = local.test_client().get(f"/files/{file_id}/download")
        assert resp.status_code == 200 and resp.headers["X-Accel-Redirect"]
        assert [(r.bytes_sent, r.served_from) for r in events(local)] == [(-1, "nginx")]
    finally:
        with local.app_context():
            db.session.remove()
            db.engine.dispose()


# ---------------------------------------------------------------------------
# A real gunicorn in redirect mode, with wget, curl and aria2c
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_gunicorn_in_redirect_mode_with_real_clients(tmp_path, redis_url, s3_server):
    bucket = s3_server.new_bucket()
    instance = make_instance(
        tmp_path / "site", redis_url, PORTAL_STORAGE_URL=f"s3://{bucket}/portal",
        PORTAL_S3_DELIVERY="redirect", PORTAL_CACHE_HOT_ENABLED="false",
        AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true", **s3_server.env())
    src = tmp_path / "src"
    data = write_random(src / NAME, 1_500_000)
    file_id = instance.add_file(src / NAME, category="教务")
    instance.create_user("alice")
    with Gunicorn(instance, workers=1) as server:
        url = f"{server.base_url}/files/{file_id}/download"
        status, headers, body = request(server.base_url, "GET", f"/files/{file_id}/download")
        assert status == 302 and body == b"" and "ETag" not in headers
        assert headers["Location"].startswith(s3_server.endpoint + f"/{bucket}/portal/")
        instance.wait_events(1)

        out = tmp_path / "wget"
        out.mkdir()
        require_tool("wget")
        subprocess.run(["wget", "-q", "--content-disposition", url], cwd=out, check=True,
                       timeout=60)
        # wget takes the name from the Content-Disposition S3 sent (the portal's, via the
        # signed response-content-disposition): the Chinese name arrives intact
        assert [p.name for p in out.iterdir()] == [NAME]
        assert (out / NAME).read_bytes() == data

        require_tool("aria2c")
        subprocess.run(["aria2c", "-q", "-x", "4", "-s", "4", "-k", "1M", "-d", str(tmp_path),
                        "-o", "aria.bin", "--allow-overwrite=true", "--auto-file-renaming=false",
                        url], check=True, timeout=120)
        assert sha256_file(tmp_path / "aria.bin") == hashlib.sha256(data).hexdigest()

        link = Browser(server.base_url).login("alice").mint_link(file_id)["url"]
        resumed = tmp_path / "curl.bin"
        resumed.write_bytes(data[:600_000])  # an interrupted download, resumed with curl -C -
        subprocess.run(["curl", "-sS", "--fail", "-L", "-C", "-", "-o", str(resumed), link],
                       check=True, timeout=60)
        assert resumed.read_bytes() == data

    rows = instance.wait_events(3)
    assert all(r["served_from"] == "s3" and r["bytes_sent"] == -1 for r in rows)
    assert rows[0]["status"] == 200 and rows[-1]["status"] == 206 and rows[-1]["via_link"]
    assert rows[-1]["range_header"] == "bytes=600000-"
