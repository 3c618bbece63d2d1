"""Every door of a download answers as the plan does (portal/download/plan.py).

Random requests -- GET or HEAD, Range (plain, suffix, open, several, broken, unsatisfiable),
If-Range, If-None-Match, If-Modified-Since, If-Match, If-Unmodified-Since, ``?version=N`` --
against random files (public, signed-in, group, someone else's group, two versions, a
missing id) and principals (anonymous, a group member, an outsider, an admin) go to:

- the fast path in front of Flask (``app``) and the Flask view alone (``view``, fast path
  off), on one database and Redis: status, headers and bytes must be identical;
- nginx's grant (``xaccel``): when it grants, every header it hands nginx must be the one
  the view sends for that request, and it grants only a 200 or a single-range 206 that
  nginx would choose too (the real nginx carrying grants out is test_nginx_xaccel.py).

Each door must answer a good share of the examples (counted), or the test fails.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from tests.helpers import add_file, fetch, signed_in, warm

DATA = bytes(range(256)) * 256  # 64 KiB
OLD = b"the first version\n" * 100
PAST, FUTURE = "Sat, 01 Jan 2000 00:00:00 GMT", "Fri, 01 Jan 2100 00:00:00 GMT"
USERS = (None, "amy", "bob", "root")
FILES = ("login", "group", "public", "other_group", "missing")

_position = st.integers(min_value=0, max_value=70_000)
_range = st.one_of(
    st.builds(lambda a, n: f"bytes={a}-{a + n}", _position, st.integers(0, 9_000)),
    st.builds(lambda n: f"bytes=-{n}", st.integers(0, 70_000)),
    st.builds(lambda a: f"bytes={a}-", _position),
    st.builds(lambda a, b, c: f"bytes={a}-{a + 5},{b}-{b + c}", _position, _position,
              st.integers(0, 50)),
    st.sampled_from(["bytes=abc", "items=0-1", "bytes=5-1", "bytes=0-0,-1", " Bytes = 5-9 ",
                     "bytes=99999999-", "bytes=" + ",".join(["1-2"] * 80), ""]),
)
_validator = st.sampled_from(["ETAG", '"other"', "*", 'W/"ETAG"', PAST, FUTURE, "garbage"])
_headers = st.fixed_dictionaries({}, optional={
    "Range": _range,
    "If-Range": _validator,
    "If-None-Match": _validator,
    "If-Modified-Since": st.sampled_from([PAST, FUTURE, "yesterday"]),
    "If-Match": _validator,
    "If-Unmodified-Since": st.sampled_from([PAST, FUTURE, "soon"]),
})
_request = st.fixed_dictionaries({
    "user": st.sampled_from(USERS),
    "file": st.sampled_from(FILES),
    "method": st.sampled_from(["GET", "GET", "GET", "HEAD"]),
    "query": st.sampled_from(["", "", "", "?version=1", "?version=2", "?version=7",
                              "?version=x"]),
    "headers": _headers,
})

# Grants: mostly what download managers send (a Range, maybe an If-Range), some of the rest.
_resume_headers = st.fixed_dictionaries({}, optional={"Range": _range, "If-Range": _validator})
_grant_request = _request | st.fixed_dictionaries({
    "user": st.sampled_from(USERS),
    "file": st.sampled_from(FILES),
    "method": st.just("GET"),
    "query": st.just(""),
    "headers": _resume_headers,
})

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def config(config, tmp_path):
    config["CACHE_LOCAL_SECONDS"] = 30  # off by default under TESTING
    config["ANALYTICS_NGINX_LOG"] = str(tmp_path / "nginx-events.log")  # grants need it
    return config


@pytest.fixture
def doors(app, make_app, make_user):
    """The apps, their clients per user (warmed on every file) and the file ids."""
    view = make_app(FAST_DOWNLOADS=False)
    xaccel = make_app(SENDFILE="x-accel")
    make_user("amy", groups=["CS"])
    make_user("bob")
    make_user("root", role="admin")
    add_file(app, OLD, "login", filename="期末复习.pdf")
    files = {
        "login": add_file(app, DATA, "login", filename="期末复习.pdf"),  # version 2
        "group": add_file(app, DATA[:1000], "group:CS", filename="notes.txt"),
        "public": add_file(app, b"<script>alert(1)</script>" * 40, "public",
                           filename="page.html"),
        "other_group": add_file(app, DATA[:10], "group:EE", filename="x.bin"),
        "missing": 987_654,
    }
    clients = {}
    for user in USERS:
        clients[user] = {name: signed_in(a, user) for name, a in
                         (("app", app), ("view", view), ("xaccel", xaccel))}
        for file_id in files.values():
            warm(app, clients[user]["app"], f"/files/{file_id}/download")
            warm(xaccel, clients[user]["xaccel"], f"/files/{file_id}/download")
    etags = {name: clients["root"]["view"].head(f"/files/{file_id}/download").headers.get("ETag")
             for name, file_id in files.items()}
    return {"app": app, "view": view, "xaccel": xaccel, "files": files, "clients": clients,
            "etags": etags}


def _comparable(answer):
    """An HTML page (404, sign-in) carries each session's CSRF token: its status and header
    names are compared; everything else byte for byte."""
    status, headers, _ = answer
    if dict(headers).get("Content-Type", "").startswith("text/html"):
        return status, sorted(k for k, _ in headers)
    return answer


def _headers_for(doors, case) -> dict:
    etag = (doors["etags"][case["file"]] or '"none"').strip('"')
    return {k: v.replace("ETAG", etag) for k, v in case["headers"].items()}


def test_the_fast_path_answers_as_the_view(doors):
    seen = {"fast": 0, "view": 0}

    @SETTINGS
    @given(case=_request)
    def check(case):
        url = f"/files/{doors['files'][case['file']]}/download{case['query']}"
        headers = _headers_for(doors, case)
        clients = doors["clients"][case["user"]]
        served = doors["app"].extensions["portal_fast_door"].served
        got = fetch(clients["app"], url, headers, case["method"])
        want = fetch(clients["view"], url, headers, case["method"])
        assert _comparable(got) == _comparable(want)
        seen["fast" if doors["app"].extensions["portal_fast_door"].served > served
             else "view"] += 1

    check()
    # worth something only if each door answered a good share of the examples (alone the
    # fast path answers 20 or more of them; in the whole suite once only 16, not yet
    # explained: docs/architecture.md's open points)
    assert seen["fast"] >= 12 and seen["view"] >= 20, seen


def test_a_grant_carries_the_views_headers(doors):
    seen = {"granted": 0, "refused": 0}

    @SETTINGS
    @given(case=_grant_request)
    def check(case):
        file_id = doors["files"][case["file"]]
        headers = _headers_for(doors, case)
        clients = doors["clients"][case["user"]]
        grant = clients["xaccel"].get(
            f"/_portal/grant/files/{file_id}/download{case['query']}",
            headers={**headers, "X-Original-Method": case["method"]})
        if grant.status_code == 403:
            seen["refused"] += 1
            return
        assert grant.status_code == 200
        seen["granted"] += 1
        status, view_headers, _ = fetch(
            clients["view"], f"/files/{file_id}/download{case['query']}", headers)
        view = dict(view_headers)
        assert status in (200, 206) and not view["Content-Type"].startswith("multipart/")
        g = grant.headers
        assert g["X-Portal-ETag"] == view["ETag"]
        assert g["X-Portal-Last-Modified"] == view["Last-Modified"]
        assert g["X-Portal-Cache-Control"] == view["Cache-Control"]
        assert g["X-Portal-Disposition"] == view["Content-Disposition"]
        assert g["X-Portal-CSP"] == view.get("Content-Security-Policy", "")
        assert g["X-Portal-Digest"] == view.get("Repr-Digest", "")
        assert g["X-Portal-Accept-Ranges"] == ("bytes" if status == 206 else "")
        # nginx answers 206 exactly when there is a Range and no If-Range but the ETag
        spec, if_range = headers.get("Range"), headers.get("If-Range")
        whole = spec is None or (if_range is not None and if_range != view["ETag"])
        assert status == (200 if whole else 206)
        _, granted_file, _, size = g["X-Portal-Grant"].split()
        full = view["Content-Length"] if status == 200 else view["Content-Range"].split("/")[1]
        assert int(granted_file) == file_id and size == full

    check()
    assert seen["granted"] >= 10 and seen["refused"] >= 10, seen
