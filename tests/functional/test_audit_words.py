"""The audit log in words: every action the portal writes (found in its source, so a new one
without words fails here) and every detail format it stores, shown in Chinese and English,
never as a raw code; a detail that does not parse is shown as stored."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from sqlalchemy import delete

from portal.extensions import db
from portal.models import AuditEntry

PORTAL = Path(__file__).resolve().parents[2] / "portal"
ZH = {"Accept-Language": "zh-CN"}
EN = {"Accept-Language": "en"}
SHA = "6e50214aba43f34fcd9b5055f369d959b95454218913a19384baf9a0a017bd33"


def written_actions() -> set[str]:
    """The action codes of every ``audit(session, "code" ...)`` call in portal (the
    conditional ones, ``"a" if x else "b"``, give both)."""
    codes = set()
    for path in PORTAL.rglob("*.py"):
        for call in re.finditer(r"\baudit\(\s*[\w.]+,\s*((?:\"[\w.]+\"(?: if [^\n]+? else )?)+)",
                                path.read_text(encoding="utf-8")):
            codes.update(re.findall(r"\"([a-z_]+\.[a-z_]+)\"", call.group(1)))
    return codes


def test_the_source_is_searched_for_actions():
    codes = written_actions()
    # the search finds the plain, the conditional and the multi-line calls
    assert {"login.success", "user.created", "user.changed", "limits.reset", "file.uploaded",
            "logout.single"} <= codes and len(codes) >= 20, codes


def _rows(page: str) -> dict[str, list[str]]:
    """Each entry row's shown text (tags and attributes dropped), by its action code."""
    rows: dict[str, list[str]] = {}
    for code, row in re.findall(r'<tr data-action="([^"]+)">(.*?)</tr>', page, re.S):
        rows.setdefault(code, []).append(html.unescape(re.sub(r"<[^>]+>", " ", row)))
    return rows


def _add(app, *entries: tuple[str, str, str]) -> None:
    with app.app_context():
        db.session.execute(delete(AuditEntry))
        for action, target, detail in entries:
            db.session.add(AuditEntry(action=action, target=target, detail=detail,
                                      client_ip="10.0.0.7"))
        db.session.commit()


@pytest.fixture
def admin(client, make_user, login):
    make_user("root", role="admin")
    login("root")
    return client


def test_every_action_has_words_in_both_languages(app, admin):
    codes = sorted(written_actions())
    _add(app, *((code, "", "") for code in codes))
    zh, en = (admin.get("/admin/audit", headers=h).get_data(as_text=True) for h in (ZH, EN))
    for page, lang in ((zh, "zh"), (en, "en")):
        rows = _rows(page)
        assert sorted(rows) == codes
        for code, (text,) in rows.items():
            assert code not in text, f"{code} shown as its code on the {lang} page"
    for code, (text,) in _rows(zh).items():  # Chinese, but for the names of protocols
        english = re.findall(r"[A-Za-z]{3,}", re.sub(r"\b(LDAP|CAS|OIDC)\b", "", text))
        assert re.search(r"[\u4e00-\u9fff]", text) and not english, (code, text)
    shown = {code: text.split() for code, (text,) in _rows(en).items()}
    assert len({" ".join(words[2:]) for words in shown.values()}) == len(codes)  # all differ


#: (action, target, detail as stored, words the zh page shows, words the en page shows)
FORMATS = [
    ("login.success", "student", "method=local", "通过密码", "with password"),
    ("login.success", "li", "method=cas", "通过校园统一身份认证（CAS）",
     "with campus sign-in (CAS)"),
    ("login.failure", "2023999", "method=local", "通过密码：用户名或密码错误",
     "with password: wrong user name or password"),
    ("login.failure", "li", "method=ldap; disabled", "通过校园目录（LDAP）：该账号已停用",
     "with campus directory (LDAP): the account is disabled"),
    ("login.failure", "li", "method=cas; bad_ticket; no ticket",
     "无法确认这次登录（未提供票据）", "the sign-in could not be confirmed (no ticket was given)"),
    ("login.failure", "wang", "method=oidc; other_source; method=oidc; "
     "issuer=https://id.example.edu.cn; subject=8f1c",
     "该用户名属于以其他方式登录的账号"
     "（https://id.example.edu.cn 的校园统一身份认证（OIDC）账号 8f1c）",
     "(campus sign-in (OIDC) account 8f1c at https://id.example.edu.cn)"),
    ("logout.single", "7", "method=cas", "通过校园统一身份认证（CAS）",
     "with campus sign-in (CAS)"),
    ("user.created", "2025001", "created role=student groups=CS2025,EE2025",
     "角色：学生，用户组：CS2025、EE2025", "role Student, groups: CS2025, EE2025"),
    ("user.changed", "2023001", "role student->staff; groups CS2023->CS2023,CS2025; "
     "password reset", "角色 学生 → 教职工；用户组 CS2023 → CS2023、CS2025；已重设密码",
     "role Student → Staff; groups CS2023 → CS2023, CS2025; password reset"),
    ("user.changed", "2024015", "disabled; groups MATH2024->", "已停用；用户组 MATH2024 → 无",
     "disabled; groups MATH2024 → none"),
    ("user.sync_ldap", "", "created 2, updated 5, disabled 1, unchanged 40, skipped 0",
     "新建 2，更新 5，停用 1，未变 40，跳过 0",
     "2 created, 5 updated, 1 disabled, 40 unchanged, 0 skipped"),
    ("user.directory_renamed", "lisi", "method=ldap; issuer=ldap:///ou=people; subject=u-1; "
     "lisi -> lisi2; username kept", "目录中改名 lisi → lisi2，用户名保持不变",
     "renamed lisi → lisi2 in the directory; the user name stays"),
    ("user.linked", "2025001", "method=cas; issuer=https://cas.example.edu.cn/cas; "
     "subject=2025001", "https://cas.example.edu.cn/cas 的校园统一身份认证（CAS）账号 2025001",
     "campus sign-in (CAS) account 2025001 at https://cas.example.edu.cn/cas"),
    ("file.access_changed", "43 线性代数 讲义", "public -> group:CS2023,MATH2024",
     "所有人，无需登录（公开） → 某个用户组的成员：CS2023、MATH2024",
     "Everyone, without signing in (public) → Members of a group: CS2023, MATH2024"),
    ("file.access_changed", "44 成绩单", "login -> user:student",
     "所有已登录用户 → 某一个人（个人文件）：student",
     "Everyone signed in → One person (a personal document): student"),
    ("file.published", "43 线性代数 讲义", "group:CS2023", "某个用户组的成员：CS2023",
     "Members of a group: CS2023"),
    ("file.uploaded", "file:43", f"version 2 (pending): 树和二叉树, 修订.pdf, 15300 bytes, "
     f"sha256 {SHA}, upload 9a943a7b40004123bc2d1045842380de",
     "第 2 版：树和二叉树, 修订.pdf（待发布），14.9 KB，SHA-256 6e50214aba43…",
     "version 2: 树和二叉树, 修订.pdf (pending publication), 14.9 KB, SHA-256 6e50214aba43…"),
    ("file.version_published", "43 线性代数 讲义", "version 2: 讲义.pdf", "第 2 版：讲义.pdf",
     "version 2: 讲义.pdf"),
    ("file.version_discarded", "43 线性代数 讲义", f"version 3: 讲义.pdf, sha256 {SHA}",
     "第 3 版：讲义.pdf，SHA-256 6e50214aba43…", "version 3: 讲义.pdf, SHA-256 6e50214aba43…"),
    ("limits.changed", "group:CS2025", '{"before": null, "after": {"connections": 2, '
     '"rate": 1048576}}', "用户组 CS2025：同时连接数 不限 → 2；速率 不限 → 1.0 MB/s",
     "Group CS2025: connections at once unlimited → 2; rate unlimited → 1.0 MB/s"),
]


@pytest.mark.parametrize(("action", "target", "detail", "zh", "en"), FORMATS,
                         ids=[f"{f[0]}-{i}" for i, f in enumerate(FORMATS)])
def test_each_detail_format_in_words(app, admin, action, target, detail, zh, en):
    _add(app, (action, target, detail))
    for headers, words in ((ZH, zh), (EN, en)):
        page = admin.get("/admin/audit", headers=headers).get_data(as_text=True)
        (text,) = _rows(page)[action]
        assert words in " ".join(text.split()).replace(" …", "…"), (words, text)
        for raw in ("method=", "->", "sha256 ", " bytes", "role=", "group:C", '"before"'):
            assert raw not in text, (raw, text)
    if SHA in detail:  # the whole digest is there to hover over, not in the table
        assert f'title="{SHA}"' in page and SHA not in " ".join(_rows(page)[action])


def test_a_detail_that_does_not_parse_is_shown_as_stored(app, admin):
    stored = ["version two of something", "method=cas; strange_reason", "role a->", "x -> y"]
    _add(app, ("file.uploaded", "file:9", stored[0]), ("login.failure", "z", stored[1]),
         ("user.changed", "z", stored[2]), ("file.access_changed", "9 t", stored[3]),
         ("some.future_action", "t", "anything"))
    page = admin.get("/admin/audit", headers=EN).get_data(as_text=True)
    rows = _rows(page)
    assert "version two of something" in rows["file.uploaded"][0]
    assert "strange_reason" in rows["login.failure"][0]  # the method still in words
    assert "with campus sign-in (CAS)" in rows["login.failure"][0]
    assert "role a->" in html.unescape(rows["user.changed"][0])
    assert "x → y" in rows["file.access_changed"][0]  # access rules that do not parse
    assert "some.future_action" in rows["some.future_action"][0]  # an unknown code as is


def test_the_filter_offers_families_in_words_and_takes_prefixes(app, admin):
    _add(app, ("login.success", "root", "method=local"), ("user.changed", "a", "enabled"),
         ("file.deleted", "3 t", ""))
    zh = admin.get("/admin/audit", headers=ZH).get_data(as_text=True)
    options = dict(re.findall(r'<option value="([^"]*)"[^>]*>([^<]*)</option>', zh))
    assert options[""] == "全部操作" and options["user."] == "用户" and options["file."]
    assert all(re.search(r"[\u4e00-\u9fff]", words) for words in options.values())
    for prefix, shown in (("user.", {"user.changed"}), ("login.", {"login.success"}),
                          ("file.deleted", {"file.deleted"}), ("", {"login.success",
                                                                    "user.changed",
                                                                    "file.deleted"})):
        page = admin.get(f"/admin/audit?action={prefix}", headers=ZH).get_data(as_text=True)
        assert set(_rows(page)) == shown, prefix
    page = admin.get("/admin/audit?action=user.", headers=ZH).get_data(as_text=True)
    assert '<option value="user." selected>' in page
