"""GET /files/zip?id=...: one resumable STORED zip of readable files (README, "HTTP").

Runs on SQLite and, when PORTAL_TEST_DATABASE_URL is set, PostgreSQL (the `app` fixture).
The archive is checked with Info-ZIP ``unzip -t`` and ``zipfile``; ranges against slices of
the full archive; the real-server test resumes an interrupted ``curl`` with ``curl -C -``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import socket
import subprocess
import threading
import zipfile
import zlib
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from servers import parse_byteranges, require_tool, sha256_file, write_random
from sqlalchemy import select

from portal.download import zipview
from portal.extensions import db
from portal.files import add_version
from portal.models import FileVersion
from portal.storage import get_storage

CHINESE = "2024秋季 课程表.pdf"
NOTES = "Lecture notes.txt"


@pytest.fixture
def docs(app, make_user):
    """alice (CS) may read `timetable`, `notes`, `public`; `secret` belongs to bob."""
    make_user("alice", groups=["CS"])
    make_user("bob")
    contents = {
        "timetable": (CHINESE, os.urandom(70_000), "login", "课程"),
        "notes": (NOTES, b"notes\n" * 5000, "group:CS", "课程"),
        "empty": ("空文件.txt", b"", "login", "课程"),
        "secret": ("成绩单.pdf", b"grades", "user:bob", "personal"),
        "public": ("校历.pdf", os.urandom(5000), "public", "general"),
        "public2": ("map.png", os.urandom(3000), "public", "general"),
    }
    out = {}
    with app.app_context():
        for key, (filename, data, access, category) in contents.items():
            version = add_version(db.session, get_storage(), io.BytesIO(data), filename=filename,
                                  title=key, category=category, access=access)
            db.session.commit()
            out[key] = (version.file_id, filename, data)
    return out


def zip_url(*ids) -> str:
    return "/files/zip?" + "&".join(f"id={i}" for i in ids)


def get_full(client, docs, *keys):
    resp = client.get(zip_url(*(docs[k][0] for k in keys)))
    assert resp.status_code == 200, resp.status_code
    return resp, resp.get_data()


def check_archive(body: bytes, expected: list[tuple[str, bytes]]) -> None:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert [i.filename for i in infos] == [name for name, _ in expected]
        for info, (_, data) in zip(infos, expected, strict=True):
            assert info.flag_bits & 0x0800  # names are UTF-8, and say so
            assert info.compress_type == zipfile.ZIP_STORED
            assert zlib.crc32(data) == info.CRC and archive.read(info) == data


def test_two_files_with_chinese_names(client, docs, login, tmp_path):
    login("alice")
    resp, body = get_full(client, docs, "timetable", "notes")
    assert resp.headers["Content-Type"] == "application/zip"
    assert int(resp.headers["Content-Length"]) == len(body)
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert re.fullmatch(r'"zip-[0-9a-f]{64}"', resp.headers["ETag"])
    assert resp.headers["Last-Modified"].endswith(" GMT")
    assert resp.headers["Cache-Control"].startswith("private")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    today = datetime.now(UTC).strftime("%Y%m%d")
    disposition = resp.headers["Content-Disposition"]  # named after the shared category
    assert re.fullmatch(r'attachment; filename="[ -~]+\.zip"; filename\*=(.*)', disposition)
    assert disposition.endswith(f"; filename*=UTF-8''{quote(f'课程-{today}.zip')}")
    check_archive(body, [(CHINESE, docs["timetable"][2]), (NOTES, docs["notes"][2])])

    saved = tmp_path / "saved.zip"
    saved.write_bytes(body)
    unzip = require_tool("unzip")
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    tested = subprocess.run([unzip, "-t", str(saved)], capture_output=True, text=True, env=env,
                            check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "No errors detected" in tested.stdout
    listed = subprocess.run([unzip, "-Z1", str(saved)], capture_output=True, text=True, env=env,
                            check=True)
    assert listed.stdout.splitlines() == [CHINESE, NOTES]


def test_empty_file_and_duplicates(client, docs, login):
    login("alice")
    a, b, e = (docs[k][0] for k in ("timetable", "notes", "empty"))
    once = client.get(zip_url(a, e, b))
    twice = client.get(f"/files/zip?id={a}&id={e}&id={a}&id={b}&id={e}")
    assert once.status_code == twice.status_code == 200
    assert once.get_data() == twice.get_data()  # duplicate ids are collapsed
    assert once.headers["ETag"] == twice.headers["ETag"]
    check_archive(once.get_data(), [(CHINESE, docs["timetable"][2]), ("空文件.txt", b""),
                                    (NOTES, docs["notes"][2])])
    swapped = client.get(zip_url(b, e, a))  # other order, other bytes, other validator
    assert swapped.headers["ETag"] != once.headers["ETag"]


def test_single_range_is_the_slice_of_the_full_archive(client, docs, login):
    login("alice")
    _, full = get_full(client, docs, "timetable", "notes")
    size = len(full)
    for spec, (start, stop) in [("100-5000", (100, 5001)), ("-1000", (size - 1000, size)),
                                (f"{size // 2}-", (size // 2, size)), ("0-0", (0, 1))]:
        resp = client.get(zip_url(docs["timetable"][0], docs["notes"][0]),
                          headers={"Range": f"bytes={spec}"})
        assert resp.status_code == 206, spec
        assert resp.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}"
        assert int(resp.headers["Content-Length"]) == stop - start
        assert resp.get_data() == full[start:stop]


def test_multiple_ranges(client, docs, login):
    login("alice")
    _, full = get_full(client, docs, "timetable", "notes")
    resp = client.get(zip_url(docs["timetable"][0], docs["notes"][0]),
                      headers={"Range": "bytes=0-9,70000-70099,-22"})
    assert resp.status_code == 206
    body = resp.get_data()
    assert int(resp.headers["Content-Length"]) == len(body)
    parts = parse_byteranges(body, resp.headers["Content-Type"])
    size = len(full)
    assert [(h["content-range"], data) for h, data in parts] == [
        (f"bytes 0-9/{size}", full[:10]),
        (f"bytes 70000-70099/{size}", full[70000:70100]),
        (f"bytes {size - 22}-{size - 1}/{size}", full[-22:]),
    ]
    assert all(h["content-type"] == "application/zip" for h, _ in parts)


def test_if_range_and_conditionals(client, docs, login):
    login("alice")
    url = zip_url(docs["timetable"][0], docs["notes"][0])
    resp, full = get_full(client, docs, "timetable", "notes")
    etag, last_modified = resp.headers["ETag"], resp.headers["Last-Modified"]

    same = client.get(url, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert same.status_code == 206 and same.get_data() == full[10:20]
    by_date = client.get(url, headers={"Range": "bytes=10-19", "If-Range": last_modified})
    assert by_date.status_code == 206 and by_date.get_data() == full[10:20]
    other = client.get(url, headers={"Range": "bytes=10-19", "If-Range": '"zip-0000"'})
    assert other.status_code == 200 and other.get_data() == full

    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert client.get(url, headers={"If-Match": '"nope"'}).status_code == 412
    unsatisfiable = client.get(url, headers={"Range": f"bytes={len(full)}-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["Content-Range"] == f"bytes */{len(full)}"

    head = client.head(url)
    assert head.status_code == 200 and head.get_data() == b""
    assert int(head.headers["Content-Length"]) == len(full)
    assert head.headers["ETag"] == etag


def test_a_new_version_changes_the_archive_and_its_validator(app, client, docs, login):
    login("alice")
    url = zip_url(docs["notes"][0], docs["timetable"][0])
    before = client.get(url)
    with app.app_context():
        add_version(db.session, get_storage(), io.BytesIO(b"new notes"), filename=NOTES,
                    title="notes", category="课程")
        db.session.commit()
    after = client.get(url)
    assert after.headers["ETag"] != before.headers["ETag"]
    stale = client.get(url, headers={"Range": "bytes=0-99", "If-Range": before.headers["ETag"]})
    assert stale.status_code == 200 and stale.get_data() == after.get_data()
    check_archive(after.get_data(), [(NOTES, b"new notes"), (CHINESE, docs["timetable"][2])])


def test_one_unreadable_file_refuses_the_whole_zip(client, docs, login):
    login("alice")
    resp = client.get(zip_url(docs["timetable"][0], docs["secret"][0]))
    assert resp.status_code == 404
    assert "成绩单" not in resp.get_data(as_text=True)
    assert client.get(zip_url(docs["timetable"][0], 99999)).status_code == 404
    assert client.get(zip_url(99999)).status_code == 404


def test_anonymous_callers_are_sent_to_sign_in(client, docs):
    url = zip_url(docs["public"][0], docs["timetable"][0])
    resp = client.get(url)
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/login?next=")
    assert "files/zip" in resp.headers["Location"]
    assert client.get(zip_url(99999)).status_code == 302  # existence never leaks


def test_public_files_need_no_account(client, docs):
    resp = client.get(zip_url(docs["public"][0], docs["public2"][0]))
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"].startswith("public")
    assert "general-" in resp.headers["Content-Disposition"]
    check_archive(resp.get_data(), [("校历.pdf", docs["public"][2]),
                                    ("map.png", docs["public2"][2])])


def test_mixed_categories_get_a_generic_name(client, docs, login):
    login("alice")
    resp = client.get(zip_url(docs["public"][0], docs["notes"][0]))
    assert re.fullmatch(r'attachment; filename="portal-files-\d{8}\.zip"',
                        resp.headers["Content-Disposition"])


BAD_QUERIES = ["id=", "id=abc", "id=-1", "id=1.0", "id=%201", "id=1&id=x",
               "&".join(f"id={i}" for i in range(1, zipview.MAX_ZIP_FILES + 2))]


def test_bad_id_lists_are_400(client, docs, login):
    login("alice")
    for query in BAD_QUERIES:
        resp = client.get(f"/files/zip?{query}", headers={"Accept-Language": "en"})
        assert resp.status_code == 400, query
        assert "A zip takes 1 to 200 files" in resp.get_data(as_text=True), query
    resp = client.get("/files/zip", headers={"Accept": "application/json"})  # (a script)
    assert resp.status_code == 400 and "1 到 200" in resp.json["message"]  # (zh_CN first)
    most = "&".join(f"id={docs['public'][0]}" for _ in range(zipview.MAX_ZIP_FILES))
    assert client.get(f"/files/zip?{most}").status_code == 200  # the maximum itself is fine


@pytest.mark.parametrize(("language", "advice"), [("en", "Tick the files you want first"),
                                                  ("zh-CN", "请先勾选")])
def test_an_empty_selection_goes_back_to_the_listing_with_advice(client, docs, login,
                                                                 language, advice):
    """The zip button pressed with nothing ticked and no script to stop it: back to the
    listing it came from, with a message in the page's language, not a bare 400."""
    login("alice")
    for query in ("", "?ids=1"):
        resp = client.get(f"/files/zip{query}", headers={
            "Referer": "http://localhost/?category=%E8%AF%BE%E7%A8%8B%E8%A1%A8&sort=popular",
            "Accept-Language": language})
        assert resp.status_code == 303
        assert resp.headers["Location"] == "/?category=%E8%AF%BE%E7%A8%8B%E8%A1%A8&sort=popular"
        page = client.get(resp.headers["Location"], headers={"Accept-Language": language})
        assert advice in page.get_data(as_text=True)
    # Another site's page is never a destination.
    resp = client.get("/files/zip", headers={"Referer": "https://evil.example/?x"})
    assert resp.status_code == 303 and resp.headers["Location"] == "/"


def test_the_route_does_not_shadow_file_pages(client, docs, login):
    login("alice")
    assert client.get(f"/files/{docs['timetable'][0]}").status_code == 200
    assert client.get("/files/zip", query_string={"id": docs["notes"][0]}).status_code == 200


def test_a_resume_reads_nothing_before_the_offset(client, docs, login, monkeypatch):
    login("alice")
    url = zip_url(docs["timetable"][0], docs["notes"][0])
    _, full = get_full(client, docs, "timetable", "notes")
    storage = client.application.extensions["portal_storage"]
    reads = []
    real = type(storage).read_range

    def spy(self, key, start, stop):
        reads.append((key, start, stop))
        return real(self, key, start, stop)

    monkeypatch.setattr(type(storage), "read_range", spy)
    notes = hashlib.sha256(docs["notes"][2]).hexdigest()
    start = len(full) - 1000  # inside the second member's data, near its end
    resp = client.get(url, headers={"Range": f"bytes={start}-"})
    assert resp.status_code == 206 and resp.get_data() == full[start:]
    [(key, first, last)] = reads  # one slice of one member: nothing of the first is read
    assert key == notes and last == len(docs["notes"][2]) and first > 0
    assert last - first < 1000

    reads.clear()  # the central directory alone, as a zip lister fetches it first
    directory_offset = int.from_bytes(full[-6:-2], "little")  # from the end record
    resp = client.get(url, headers={"Range": f"bytes={directory_offset}-"})
    assert resp.get_data() == full[directory_offset:] and reads == []


def test_missing_stored_content_is_503_not_a_truncated_zip(app, client, docs, login):
    login("alice")
    with app.app_context():
        version = db.session.query(FileVersion).filter_by(file_id=docs["notes"][0]).one()
        get_storage().delete(version.storage_key)
    resp = client.get(zip_url(docs["timetable"][0], docs["notes"][0]))
    assert resp.status_code == 503
    head = client.head(zip_url(docs["timetable"][0], docs["notes"][0]))
    assert head.status_code == 200  # HEAD promises nothing it has to read


# ---------------------------------------------------------------------------
# A real gunicorn and a real curl: interrupt, then resume with `curl -C -`
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def dropping_proxy(upstream_port: int, *, after: int):
    """A one-connection HTTP relay to the server that closes the connection once ``after``
    bytes of the response have been passed on; yields its base URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def relay() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn, socket.create_connection(("127.0.0.1", upstream_port)) as upstream:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        return
                    head += data
                upstream.sendall(head)
                passed = 0
                while passed < after:
                    data = upstream.recv(min(65536, after - passed))
                    if not data:
                        return
                    conn.sendall(data)
                    passed += len(data)

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        thread.join(30)
        listener.close()


@pytest.mark.slow
def test_curl_resumes_an_interrupted_zip(portal_server, tmp_path):
    curl = require_tool("curl")
    instance = portal_server.instance
    sources = [("第一讲 录像.mp4", 6 * 1024 * 1024), ("空.txt", 0), ("课件.pdf", 2 * 1024 * 1024)]
    ids = []
    for number, (name, size) in enumerate(sources):
        write_random(tmp_path / "src" / name, size)
        ids.append(instance.add_file(tmp_path / "src" / name, title=f"zip resume {number}",
                                     category="zip"))
    url = portal_server.base_url + zip_url(*ids)

    whole = tmp_path / "whole.zip"
    subprocess.run([curl, "-sSf", "-o", str(whole), url], check=True, timeout=60)

    # The connection drops after 3 MiB (a Wi-Fi hand-over, a closed laptop lid): curl keeps
    # what it got and says so (exit 18, partial file). curl's own --limit-rate is no way to
    # interrupt it reliably: it reads several MiB in a burst before throttling.
    partial = tmp_path / "resumed.zip"
    with dropping_proxy(portal_server.port, after=3 * 1024 * 1024) as proxy_url:
        broken = subprocess.run([curl, "-sS", "-o", str(partial), proxy_url + zip_url(*ids)],
                                capture_output=True, text=True, timeout=60, check=False)
    assert broken.returncode == 18, broken.stderr  # CURLE_PARTIAL_FILE
    cut = partial.stat().st_size
    assert 2 * 1024 * 1024 < cut < whole.stat().st_size

    resumed = subprocess.run([curl, "-sSf", "-C", "-", "-o", str(partial), "-w",
                              "%{http_code}", url], capture_output=True, text=True, timeout=60,
                             check=True)
    assert resumed.stdout == "206"
    assert sha256_file(partial) == sha256_file(whole)
    with zipfile.ZipFile(partial) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == [name for name, _ in sources]


def test_a_zip_is_a_download_of_each_member_and_a_resume_counts_once(app, client, docs,
                                                                     login, make_user):
    from portal.analytics.models import LogicalDownload
    from portal.analytics.recorder import recorder
    from portal.models import DownloadEvent

    login("alice")
    keys = ("timetable", "notes", "empty")
    url = zip_url(*(docs[k][0] for k in keys))
    full, body = get_full(client, docs, *keys)
    full.close()  # the event is recorded when the server closes the body
    # a second person: interrupted inside the second member, then resumed with Range
    make_user("carol", groups=["CS"])
    login("carol")
    timetable, notes = docs["timetable"][2], docs["notes"][2]
    cut = body.index(notes[:64]) + 1000
    for spec, part in ((f"bytes=0-{cut - 1}", body[:cut]), (f"bytes={cut}-", body[cut:])):
        resp = client.get(url, headers={"Range": spec})
        assert resp.status_code == 206 and resp.get_data() == part
        resp.close()
    recorder(app).flush()
    with app.app_context():
        rows = db.session.scalars(select(DownloadEvent).order_by(DownloadEvent.id)).all()
        by_file = {}
        for row in rows:
            by_file.setdefault(row.file_id, []).append(
                (row.status, row.served_ranges, row.bytes_sent, row.served_from))
        downloads = db.session.scalars(select(LogicalDownload)).all()
    n, t = len(notes), len(timetable)
    assert by_file == {  # alice's whole zip, carol's cut one and its resume
        docs["timetable"][0]: [(200, f"0-{t - 1}", t, "zip"), (206, f"0-{t - 1}", t, "zip")],
        docs["notes"][0]: [(200, f"0-{n - 1}", n, "zip"), (206, "0-999", 1000, "zip"),
                           (206, f"1000-{n - 1}", n - 1000, "zip")],
    }  # the empty member has no bytes to count
    assert sorted((d.file_id, d.user_id is not None, d.events, d.covered, d.completed)
                  for d in downloads) == sorted(
        [(docs["timetable"][0], True, 1, t, True)] * 2
        + [(docs["notes"][0], True, 1, n, True), (docs["notes"][0], True, 2, n, True)])
    page = client.get("/me/downloads").get_data(as_text=True)
    assert "timetable" in page and "notes" in page
    make_user("boss", role="admin")
    login("boss")
    stats = client.get(f"/api/analytics/files/{docs['notes'][0]}?days=7").json
    assert stats["downloads"] == 2 and stats["completion_rate"] == 1.0
    assert stats["bytes_served"] == 2 * n  # the resume added only what was missing


def test_a_cut_zip_counts_what_arrived_of_each_member(app, docs):
    from portal.analytics import logical
    from portal.download import zipplan

    archive = zipplan.plan_zip([
        zipplan.ZipMember(name=n, size=s, crc32=0, mtime=datetime(2024, 9, 1, tzinfo=UTC),
                          key=k) for n, s, k in (("a", 100, "a" * 64), ("e", 0, "e" * 64),
                                                 ("b", 50, "b" * 64))])
    second = archive.starts[archive.segments.index(
        next(s for s in archive.segments if getattr(s, "key", "") == "b" * 64))]
    cut = logical.delivered(200, [(0, archive.size)], second + 20, archive.size)
    assert zipplan.member_ranges(archive, cut) == [[(0, 100)], [(0, 20)]]
    assert zipplan.member_ranges(archive, [(second + 10, archive.size)]) == [[], [(10, 50)]]
