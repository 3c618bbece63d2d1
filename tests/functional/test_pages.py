"""Catalog, file pages, login and error pages through the test client."""

import io

import pytest

from portal.extensions import db
from portal.files import add_version
from portal.storage import get_storage
from tests.helpers import csrf_from

pytestmark = pytest.mark.databases  # catalog search: lower() and LIKE differ by dialect


def add(app, title, access, body=b"data", category="课程资料", filename=None):
    with app.app_context():
        version = add_version(db.session, get_storage(), io.BytesIO(body),
                              filename=filename or f"{title}.txt", title=title,
                              category=category, access=access)
        db.session.commit()
        return version.file_id


def test_catalog_shows_only_readable_titles(app, client, make_user, login):
    add(app, "全校课程表", "public")
    add(app, "张三的成绩单", "user:zhangsan")
    add(app, "计算机课件", "group:CS")
    html = client.get("/").get_data(as_text=True)
    assert "全校课程表" in html and "成绩单" not in html and "计算机课件" not in html
    make_user("lisi", groups=["CS"])
    login("lisi")
    html = client.get("/").get_data(as_text=True)
    assert "全校课程表" in html and "计算机课件" in html and "张三的成绩单" not in html
    assert client.get("/?q=成绩单").get_data(as_text=True).count("<tr>") == 2  # header + "none"


def test_search_and_category(app, client):
    add(app, "Data Structures notes", "public", filename="ds-chapter1.pdf")
    add(app, "Exam plan", "public", category="课程表")
    assert "Exam plan" not in client.get("/?q=ds-chapter").get_data(as_text=True)
    assert "Data Structures" in client.get("/?q=ds-chapter").get_data(as_text=True)
    page = client.get("/?category=课程表").get_data(as_text=True)
    assert "Exam plan" in page and "Data Structures" not in page
    assert client.get("/?q=100%25_").status_code == 200  # LIKE wildcards are literal


def test_file_page_refusals(app, client, make_user, login):
    private = add(app, "李四的在读证明", "user:lisi")
    public = add(app, "校历", "public", body=b"x" * 2048)
    page = client.get(f"/files/{public}")
    assert page.status_code == 200 and "2.0 KB" in page.get_data(as_text=True)
    resp = client.get(f"/files/{private}")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login?next=")
    assert client.get(f"/api/files/{private}").status_code == 401
    make_user("wangwu")
    login("wangwu")
    for path in (f"/files/{private}", f"/api/files/{private}", "/files/999", "/api/files/999"):
        assert client.get(path).status_code == 404, path
    body = client.get(f"/files/{private}").get_data(as_text=True)
    assert "李四" not in body


def test_error_pages_are_bilingual(client):
    zh = client.get("/files/999", headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    assert zh.status_code in (302, 404)
    resp = client.get("/no/such/page")
    assert resp.status_code == 404 and "找不到" in resp.get_data(as_text=True)
    en = client.get("/no/such/page", headers={"Accept-Language": "en-US,en;q=0.8"})
    assert "Not found" in en.get_data(as_text=True)
    api = client.get("/api/no-such")
    assert api.status_code == 404 and api.json["error"]


def test_every_page_has_csrf_meta(client):
    assert csrf_from(client.get("/login").get_data(as_text=True))
    assert csrf_from(client.get("/").get_data(as_text=True))


def test_login_logout_and_next(client, make_user):
    make_user("zhangsan")
    token = csrf_from(client.get("/login").get_data(as_text=True))
    bad = client.post("/login", data={"username": "zhangsan", "password": "nope-nope",
                                      "csrf_token": token})
    assert bad.status_code == 200 and "zhangsan" in bad.get_data(as_text=True)
    ok = client.post("/login?next=//evil.example/x", data={
        "username": "zhangsan", "password": "password123", "csrf_token": token})
    assert ok.status_code == 302 and ok.headers["Location"] == "/"
    token = csrf_from(client.get("/").get_data(as_text=True))
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert "zhangsan" not in client.get("/").get_data(as_text=True)


def test_login_without_csrf_is_refused(client, make_user):
    make_user("zhangsan")
    resp = client.post("/login", data={"username": "zhangsan", "password": "password123"})
    assert resp.status_code == 400


def test_sort_by_downloads_counts_and_my_downloads(app, client, make_user, login):
    from portal.analytics.recorder import recorder

    quiet = add(app, "冷门资料", "public", body=b"q" * 100)
    hot = add(app, "热门资料", "public", body=b"h" * 100)
    make_user("zhangsan")
    login("zhangsan")
    client.get(f"/files/{hot}/download").close()
    client.get(f"/files/{hot}/download", headers={"Range": "bytes=0-49"}).close()
    recorder(app).flush()  # events are buffered in Redis until the flusher writes them
    newest = client.get("/").get_data(as_text=True)
    assert newest.index("热门资料") < newest.index("冷门资料")  # added last
    add(app, "冷门资料", "public", body=b"q2" * 100)  # a new version makes it the newest
    newest = client.get("/").get_data(as_text=True)
    assert newest.index("冷门资料") < newest.index("热门资料")
    popular = client.get("/?sort=popular").get_data(as_text=True)
    assert popular.index("热门资料") < popular.index("冷门资料")
    page = client.get(f"/files/{hot}").get_data(as_text=True)
    assert '<dd id="download-count">1</dd>' in page  # two responses, one logical download
    assert '<dd id="download-count">0</dd>' in client.get(f"/files/{quiet}").get_data(
        as_text=True)
    mine = client.get("/me/downloads").get_data(as_text=True)
    assert "热门资料" in mine and "冷门资料" not in mine and "100%" in mine
    assert client.get("/?sort=bogus").status_code == 200
