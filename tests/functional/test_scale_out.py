"""Two real gunicorn nodes sharing one PostgreSQL schema, one Redis and one S3 bucket
(rclone serve s3): a download resumes across nodes with the same ETag, a signed link minted
on one works on the other, and a new version added with ``flask file add`` is seen at once
by a node that had its metadata cached."""

from __future__ import annotations

import hashlib
import os
import urllib.parse

import pytest
import s3server
from servers import Browser, Gunicorn, make_instance, request, write_random

from tests.helpers import PG_URL, temporary_schema, unavailable

pytestmark = pytest.mark.slow

s3_server = s3server.s3_server  # the session fixture, used by name


@pytest.fixture(scope="module")
def pg_schema_url(pg_admin):
    """A fresh PostgreSQL schema for both nodes (dropped afterwards)."""
    if not PG_URL:
        unavailable("needs PORTAL_TEST_DATABASE_URL: two nodes cannot share a SQLite file")
    with temporary_schema(pg_admin, "scale") as url:
        yield url


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, redis_url, pg_schema_url, s3_server):
    """(instance, node_a, node_b): one set-up, two gunicorns on different ports."""
    bucket = s3_server.new_bucket()
    instance = make_instance(
        tmp_path_factory.mktemp("cluster"), redis_url,
        PORTAL_DATABASE_URL=pg_schema_url, PORTAL_STORAGE_URL=f"s3://{bucket}/portal",
        PORTAL_CACHE_HOT_MIN_HITS="2", AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true",
        **s3_server.env())
    instance.create_user("alice")
    with Gunicorn(instance) as node_a, Gunicorn(instance) as node_b:
        yield instance, node_a, node_b


def test_download_resumes_on_the_other_node(cluster):
    instance, a, b = cluster
    data = write_random(instance.root / "files" / "lecture.bin", 3_000_000)
    file_id = instance.add_file(instance.root / "files" / "lecture.bin", title="Lecture")
    path = f"/files/{file_id}/download"

    status, head_a, first = request(a.base_url, "GET", path, {"Range": "bytes=0-999999"})
    assert status == 206
    etag = head_a["ETag"]
    assert etag == f'"{hashlib.sha256(data).hexdigest()}"'
    # the rest from node B, conditional on the same representation (curl -C / If-Range)
    status, head_b, rest = request(b.base_url, "GET", path,
                                   {"Range": "bytes=1000000-", "If-Range": etag})
    assert status == 206 and head_b["ETag"] == etag
    assert head_b["Content-Range"] == f"bytes 1000000-{len(data) - 1}/{len(data)}"
    assert first + rest == data
    # and again, now that the version is hot in the shared cache
    for node in (a, b, a):
        status, _, body = request(node.base_url, "GET", path, {"Range": "bytes=2999990-"})
        assert status == 206 and body == data[-10:]


def test_signed_link_from_one_node_works_on_the_other(cluster):
    instance, a, b = cluster
    data = write_random(instance.root / "files" / "transcript.pdf", 50_000)
    file_id = instance.add_file(instance.root / "files" / "transcript.pdf",
                                title="Transcript", access="user:alice")
    link = Browser(a.base_url).login("alice").mint_link(file_id)["url"]
    parts = urllib.parse.urlsplit(link)
    status, _, body = request(b.base_url, "GET", parts.path)
    assert status == 200 and body == data
    status, _, body = request(b.base_url, "GET", parts.path, {"Range": "bytes=10-19"})
    assert status == 206 and body == data[10:20]
    # without the link, node B refuses the anonymous client
    status, _, _ = request(b.base_url, "GET", f"/files/{file_id}/download")
    assert status == 302


def test_new_version_is_seen_by_the_other_node(cluster):
    instance, a, b = cluster
    source = instance.root / "files" / "timetable.pdf"
    one = write_random(source, 20_000)
    file_id = instance.add_file(source, title="Timetable", category="课程表")
    path = f"/files/{file_id}/download"
    for node in (a, b, b):  # B now has the file's metadata cached
        status, headers, body = request(node.base_url, "GET", path)
        assert status == 200 and body == one
    two = write_random(source, 21_000)
    assert instance.add_file(source, title="Timetable", category="课程表") == file_id
    for node in (b, a):
        status, headers, body = request(node.base_url, "GET", path)
        assert status == 200 and body == two
        assert headers["ETag"] == f'"{hashlib.sha256(two).hexdigest()}"'
