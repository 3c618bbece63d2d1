"""Every page in the real chromium, at a desk (1280 px) and on a phone (390 px), in Chinese and
in English (issue 18).

Each page must fit its width (no horizontal scrolling), show no English msgid of the catalog
as visible text on a Chinese page (nor as a chart's label), no English word at all there
but names and the demo's data (text that never went through Babel), and show times in the portal's
zone (PORTAL_ANALYTICS_TIMEZONE, set here to one far from both UTC and Shanghai so that a
time shown in the wrong zone cannot pass). A table that reflows on a phone (table.stack)
must cut no cell. One browser, one server, one sign-in per role; the pages and sizes are
parameters. Before any page is looked at, the history fixture makes audit entries of many
kinds through the server (sign-ins, groups, users, an upload and its publication, access,
limits) and the CLI (directory links), so the audit log, groups and limits show real data.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from babel.messages.pofile import read_po
from servers import Gunicorn, make_instance

from tests.helpers import DEMO_PASSWORD, screenshot, wait_for

ZONE = "Pacific/Honolulu"  # UTC-10 all year: neither UTC nor Asia/Shanghai
PO = (Path(__file__).resolve().parents[2] / "portal" / "translations" / "zh_Hans_CN"
      / "LC_MESSAGES" / "messages.po")
WIDTHS = {"desk": 1280, "phone": 390}
LOCALES = {"zh": "zh-CN", "en": "en-US"}


def _english_msgids() -> list[str]:
    """The catalog's English msgids a Chinese page must never show: those translated to
    something else, with a word of three letters or more (not "CSV", not "%(n)s")."""
    with open(PO, "rb") as fh:
        catalog = read_po(fh, locale="zh_Hans_CN")
    found = set()
    for message in catalog:
        ident = message.id if isinstance(message.id, str) else message.id[0]
        string = message.string if isinstance(message.string, str) else message.string[0]
        plain = re.sub(r"%\(\w+\)[sd]|%[sd]", "", ident).strip(" .:…")
        if not plain or string == ident or not re.search(r"[A-Za-z]{3,}", plain):
            continue
        if plain == ident or len(plain) > 8:  # a placeholder-free part long enough to mean it
            found.add(plain)
    return sorted(found)


#: English words a Chinese page may show: names that are never translated (products,
#: formats, units, download managers) and the demo's own data (below).
NAMES = {
    "admin", "api", "aria2c", "bytes", "cas", "chrome", "chromium", "csv", "curl", "docx",
    "edge", "firefox", "gib", "gunicorn", "healthz", "http", "https", "idm", "json", "kib",
    "ldap", "linux", "mac", "mib", "nginx", "oidc", "pdf", "postgresql", "prometheus",
    "python", "redis", "safari", "sha", "sha256", "sqlite", "staff", "student", "txt", "utc",
    "wget", "windows", "zip",
}
WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")


def _data_words() -> set[str]:
    """The words of the demo's titles, file names, user and group names and of what
    ``analytics simulate`` adds: data, shown as it was entered."""
    from portal import demo
    from portal.analytics import simulate

    texts = [*(" ".join(map(str, u[:2])) + " " + " ".join(u[3]) for u in demo.USERS),
             *(f"{d[0]} {d[1]} {d[3]}" for d in demo.DOCUMENTS), " ".join(demo.BIG),
             " ".join(simulate.GROUPS), simulate.SIM_GROUP, "simulated"]
    return {w.lower() for t in texts for w in WORD.findall(t)}


def _english_words(texts: list[str]) -> list[str]:
    """The English words (with three letters in a row) of a Chinese page that are neither
    names nor data: text written into a template or a script past Babel, which the
    catalog-based look above cannot know of. A chart's label cut short ("Introductio…") is
    the start of a data word."""
    data = _data_words()
    allowed = NAMES | data
    found = []
    for text in texts:
        # a time zone's name (Pacific/Honolulu), a URL, a path and a digest are shown as
        # they are
        plain = re.sub(r"\b[A-Z][a-z]+/[A-Za-z_]+\b|https?://\S+|/[\w/{}.-]+"
                       r"|\b[0-9a-f]{8,}\b|\bRetry-After\b", " ", text)
        for match in WORD.finditer(plain):
            word = match.group().lower()
            if (not re.search(r"[a-z]{3}", word) or word in allowed
                    or re.fullmatch(r"sim\d{6}", word)):  # simulate's usernames
                continue
            if plain[match.end():match.end() + 1] == "…" and any(
                    d.startswith(word) for d in data):
                continue
            found.append(match.group())
    return sorted(set(found))


#: Every visible text node, and the labels of every chart, of the page.
VISIBLE_TEXT = """() => {
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement, text = node.textContent.trim();
    if (!text || !el || el.closest('script, style, template, [hidden]')) continue;
    if (!el.getClientRects().length || getComputedStyle(el).visibility === 'hidden') continue;
    out.push(text);
  }
  document.querySelectorAll('[placeholder], [title], [aria-label]').forEach((el) => {
    ['placeholder', 'title', 'aria-label'].forEach(
      (a) => el.getAttribute(a) && out.push(el.getAttribute(a)));
  });
  document.querySelectorAll('input[type=submit], input[type=button]').forEach(
    (el) => out.push(el.value));
  if (window.Chart) document.querySelectorAll('canvas').forEach((c) => {
    const chart = Chart.getChart(c);
    if (!chart) return;
    (chart.data.labels || []).forEach((l) => out.push(String(l)));
    chart.data.datasets.forEach((d) => d.label && out.push(String(d.label)));
    Object.values(chart.scales).forEach(
      (s) => (s.ticks || []).forEach((t) => out.push(String(t.label))));
  });
  return out;
}"""

#: What a page needs before it is looked at: its charts drawn, its tables filled.
READY = {
    "admin-overview": "#dashboard-top canvas",
    "admin-analytics-overview": "#top-files tbody tr",
    "admin-analytics-time": "#heatmap tbody tr",
    "admin-analytics-file": "#versions tbody tr",
}
CHARTS = {
    "admin-overview": ["top-chart"],
    "admin-analytics-overview": ["top-chart"],
    "admin-analytics-time": ["series-chart", "forecast-chart"],
    "admin-analytics-file": ["file-series", "completion-chart", "clients-chart"],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, redis_url):
    """The demo data, a few weeks of simulated downloads, and the zone set far away."""
    instance = make_instance(tmp_path_factory.mktemp("pages"), redis_url,
                             PORTAL_ANALYTICS_TIMEZONE=ZONE)
    instance.flask("demo", "--big-mb", "1")
    instance.flask("analytics", "simulate", "--events", "3000", "--days", "30",
                   "--users", "60", "--files", "12")
    with Gunicorn(instance, workers=1) as running:
        yield running


@pytest.fixture(scope="module")
def sessions(browser, server):
    """One sign-in per role, reused by every page's context; the student downloads a file
    first so that /me/downloads has a row."""
    states = {}
    for user in ("student", "admin"):
        context = browser.new_context(base_url=server.base_url, locale="zh-CN")
        page = context.new_page()
        page.goto("/login")
        page.fill("input[name=username]", user)
        page.fill("input[name=password]", DEMO_PASSWORD)
        page.click("main form button[type=submit]")
        page.wait_for_url("**/")
        if user == "student":  # a demo document (the simulated ones have no bytes)
            page.goto("/?category=课程表")
            first = page.locator("table.files tbody td:nth-child(2) a").first.get_attribute("href")
            assert page.request.get(first.rstrip("/") + "/download").ok
            # the flusher writes it down within a flush interval, longer when the machine
            # is busy: twice a page looked before it had (its newest row was days old)
            wait_for(lambda page=page: newest_download_age(page) < 3600,
                     what="the student's download on /me/downloads")
        states[user] = context.storage_state()
        context.close()
    return states


def newest_download_age(page, *, reload: bool = True) -> float:
    """Seconds between now and the newest row of /me/downloads read as the portal's zone
    (the page is loaded first unless ``reload`` is false); infinite while it has none."""
    if reload:
        page.goto("/me/downloads")
    cells = page.locator("main table tbody tr").first.locator("td").all_inner_texts()
    moments = [c for c in cells if re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", c.strip())]
    if not moments:
        return float("inf")
    started = datetime.strptime(moments[0].strip(), "%Y-%m-%d %H:%M")
    return abs((datetime.now(ZoneInfo(ZONE)).replace(tzinfo=None) - started).total_seconds())


#: What the module's admin does before the pages are looked at, so that the audit log, the
#: groups and the limits show real entries of many kinds: a new file with a Chinese name (its
#: SHA-256 a long word), several groups, users created and changed, a limit changed.
UPLOADED = "数据结构-第04章-树和二叉树.pdf"
REVISED = "数据结构-第04章-树和二叉树（修订版）.pdf"


def _csrf(request, path: str) -> str:
    html = request.get(path).text()
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', html).group(1)


def _upload(request, csrf: str, data: bytes, **meta: str) -> int:
    """One whole tus upload (creation with its body) through the server: the file's id."""
    from portal.uploads.tus import format_metadata

    answer = request.post("/api/uploads/", data=data, headers={
        "Tus-Resumable": "1.0.0", "X-CSRFToken": csrf, "Upload-Length": str(len(data)),
        "Upload-Metadata": format_metadata(meta),
        "Content-Type": "application/offset+octet-stream"})
    assert answer.status == 201, answer.text()
    return int(answer.headers["upload-file-id"])


def _post(request, path: str, csrf: str, **form: str) -> None:
    answer = request.post(path, form={"csrf_token": csrf, **form}, max_redirects=0)
    assert answer.status in (302, 303), (path, answer.status, re.findall(
        r'class="(?:field-error|flash[^"]*)"[^>]*>([^<]*)', answer.text()))


@pytest.fixture(scope="module")
def history(browser, server, sessions):
    """Audit entries of many kinds, made through the running server as people make them
    (and the CLI where no page does it)."""
    context = browser.new_context(base_url=server.base_url, locale="zh-CN")
    anonymous = context.request
    for name, password in (("student", "not-the-password"), ("2023999", "whatever-1")):
        answer = anonymous.post("/login", form={"username": name, "password": password,
                                                "csrf_token": _csrf(anonymous, "/login")})
        assert answer.status == 200 and "/login" in answer.url  # refused, audited
    context.close()
    context = browser.new_context(base_url=server.base_url, storage_state=sessions["admin"])
    admin = context.request
    csrf = _csrf(admin, "/admin/")
    for name, about in (("CS2025", "计算机科学与技术 2025 级"), ("EE2025", "电子信息工程 2025 级")):
        _post(admin, "/admin/groups", csrf, name=name, description=about)
    _post(admin, "/admin/users", csrf, username="2025001", display_name="赵六", role="student",
          groups="CS2025 EE2025", password="zhao-liu-2025", active="y")
    listed = admin.get("/admin/users?q=2023001").text()
    user_id = re.search(r'href="/admin/users/(\d+)"', listed).group(1)
    _post(admin, f"/admin/users/{user_id}", csrf, username="2023001", display_name="李四",
          role="staff", groups="CS2023 CS2025", password="li-si-new-2025", active="y")
    file_id = _upload(admin, csrf, b"%PDF-1.4 tree chapter\n" * 400, filename=UPLOADED,
                      title="数据结构 第4章 树和二叉树", category="课程资料",
                      access="group:CS2023,CS2025", draft="1")
    _post(admin, f"/admin/files/{file_id}/publish", csrf)
    assert _upload(admin, csrf, b"%PDF-1.4 revised\n" * 900, filename=REVISED,
                   file_id=str(file_id)) == file_id
    _post(admin, f"/admin/files/{file_id}/versions/2/publish", csrf)
    _post(admin, f"/admin/files/{file_id}", csrf, title="数据结构 第4章 树和二叉树",
          category="课程资料", description="", access_kind="group",
          access_group="CS2023, CS2025, MATH2024", access_user="")
    _post(admin, f"/admin/files/{file_id}/delete", csrf, confirm="y")
    _post(admin, f"/admin/files/{file_id}/restore", csrf)
    _post(admin, "/admin/limits/edit?who=group:CS2025", csrf, connections="2", rate="1M",
          action="save")
    _post(admin, "/admin/limits/edit?who=anonymous", csrf, connections="3", rate="",
          action="save")
    context.close()
    server.instance.flask("user", "link", "2025001", "--method", "cas", "--issuer",
                          "https://cas.example.edu.cn/cas", "--subject", "2025001")
    server.instance.flask("user", "unlink", "2025001", "--method", "cas", "--issuer",
                          "https://cas.example.edu.cn/cas")
    return {"file": file_id}


PAGES = [  # name, who, path ({file} is filled in), screenshot kept in docs/screenshots
    ("login", None, "/login", False),
    ("catalog", "student", "/", False),
    ("file-page", "student", "/files/{file}", False),
    ("my-downloads", "student", "/me/downloads", False),
    ("admin-overview", "admin", "/admin/", True),
    ("admin-files", "admin", "/admin/files", False),
    ("admin-users", "admin", "/admin/users", False),
    ("admin-groups", "admin", "/admin/groups", True),
    ("admin-limits", "admin", "/admin/limits", False),
    ("admin-audit-log", "admin", "/admin/audit", True),
    ("admin-upload", "admin", "/admin/upload", False),
    ("admin-analytics-overview", "admin", "/admin/analytics/", True),
    ("admin-analytics-time", "admin", "/admin/analytics/time", True),
    ("admin-analytics-file", "admin", "/admin/analytics/files/{top}", True),
]


@pytest.mark.parametrize("lang", list(LOCALES))
@pytest.mark.parametrize("width", list(WIDTHS))
@pytest.mark.parametrize(("name", "who", "path", "keep"), PAGES, ids=[p[0] for p in PAGES])
def test_page(browser, server, sessions, history, name, who, path, keep, width, lang):
    context = browser.new_context(
        base_url=server.base_url, locale=LOCALES[lang], is_mobile=width == "phone",
        viewport={"width": WIDTHS[width], "height": 900}, timezone_id="Europe/London",
        storage_state=sessions[who] if who else None)
    page = context.new_page()
    page.set_default_timeout(15000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        if "{file}" in path:
            files = page.request.get("/api/files?category=课程表").json()["files"]
            path = path.format(file=files[0]["id"])
        if "{top}" in path:
            top = page.request.get("/api/analytics/top-files?days=30").json()
            path = path.format(top=top[0]["file_id"])
        page.goto(path)
        if name in READY:
            page.locator(READY[name]).first.wait_for()
        for chart in CHARTS.get(name, []):
            page.wait_for_function(
                f"() => window.Chart && Chart.getChart(document.getElementById('{chart}'))")
        page.wait_for_load_state("networkidle")
        if keep and lang == "zh":  # before the checks: a failing page is seen too
            screenshot(page, name if width == "desk" else f"{name}-phone")
        assert page.locator("html").get_attribute("lang") == LOCALES[lang].split("-")[0] \
            or page.locator("html").get_attribute("lang") == LOCALES[lang]
        scroll, inner = page.evaluate(
            "[document.documentElement.scrollWidth, window.innerWidth]")
        # On a phone chromium widens the layout viewport (innerWidth) to fit a page that
        # overflows, so the device's width is the measure too.
        assert scroll <= min(inner, WIDTHS[width]), f"{name} is {scroll} px wide at {inner} px"
        texts = page.evaluate(VISIBLE_TEXT)
        english = set(_english_msgids())
        long_ones = [m for m in english if len(m) >= 20]
        shown = [t for t in texts if t.strip(" .:…") in english
                 or any(m in t for m in long_ones)]
        if lang == "en":  # the same looks find the English: they are not blind
            assert shown, f"no msgid of the catalog found on the English {name} page"
            assert _english_words(texts), f"no English word found on the English {name} page"
        else:
            assert not shown, f"untranslated on the Chinese {name} page: {shown}"
            weekdays = [t for t in texts if re.search(r"\b(Mon|Tue|Wed|Thu|Fri|Sat|Sun)\b", t)]
            assert not weekdays, f"English weekdays on the Chinese {name} page: {weekdays[:5]}"
            hard_coded = _english_words(texts)
            assert not hard_coded, f"English outside the catalog on the Chinese {name} page: " \
                                   f"{hard_coded[:10]}"
        cut = page.evaluate(CUT_CELLS)
        assert cut == [], f"{name}: cells cut off at {WIDTHS[width]} px: {cut[:5]}"
        if name == "admin-audit-log":
            _history_shown(page)
        _times_in_zone(page, name)
        assert errors == [], errors
    finally:
        context.close()


#: The cells of a table that reflows on a phone (table.stack) that reach past the page's
#: edge or the end of their own table: cut off, though the page itself does not scroll.
CUT_CELLS = """() => [...document.querySelectorAll('table.stack td')]
  .filter((cell) => cell.getClientRects().length)
  .filter((cell) => {
    const box = cell.getBoundingClientRect(), table = cell.closest('table').getBoundingClientRect();
    return box.right > Math.min(window.innerWidth, table.right) + 1;
  })
  .map((cell) => cell.textContent.trim().slice(0, 40))"""

#: What the history fixture did, as the audit log's rows name it.
KINDS = {"login.success", "login.failure", "group.created", "user.created", "user.changed",
         "file.uploaded", "file.published", "file.version_published", "file.access_changed",
         "file.deleted", "file.restored", "limits.changed", "user.linked", "user.unlinked"}


def _history_shown(page) -> None:
    """The audit log shows the fixture's entries in words: a Chinese file name, several
    groups, a SHA-256 as its first digits with the whole in its title, no action's code."""
    table = page.locator("#audit-entries")
    kinds = set(table.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.action)"))
    assert kinds >= KINDS, KINDS - kinds
    text = table.inner_text()
    assert UPLOADED in text and REVISED in text
    assert all(g in text for g in ("CS2023", "CS2025", "MATH2024", "EE2025"))
    assert not [code for code in kinds if code in text]
    digests = table.locator("code.digest").evaluate_all(
        "codes => codes.map(c => [c.title, c.textContent])")
    sha = [(whole, shown) for whole, shown in digests if re.fullmatch(r"[0-9a-f]{64}", whole)]
    assert len(sha) >= 2 and all(shown == whole[:12] + "…" for whole, shown in sha), digests


def _times_in_zone(page, name: str) -> None:
    """The times a page shows are the portal's zone's, named on the page."""
    zone = ZoneInfo(ZONE)
    if name == "catalog":
        link = page.locator("table.files tbody tr").first
        file_id = int(link.locator("td:nth-child(2) a").get_attribute("href").rsplit("/", 1)[1])
        updated = datetime.fromisoformat(page.request.get(f"/api/files/{file_id}").json()
                                         ["updated_at"])
        # text_content: a phone hides the column, the date is still the zone's
        assert updated.astimezone(zone).strftime("%Y-%m-%d") in link.text_content()
    elif name == "file-page":
        file_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
        data = page.request.get(f"/api/files/{file_id}").json()
        created = datetime.fromisoformat(data["versions"][0]["created_at"])
        shown = created.astimezone(zone).strftime("%Y-%m-%d %H:%M")
        assert shown in page.locator("main").inner_text()
        assert ZONE in page.locator("main").inner_text()
    elif name == "my-downloads":
        assert ZONE in page.locator("main").inner_text()
        # the newest row is the download of the sign-in, shown in the portal's zone
        assert newest_download_age(page, reload=False) < 3600
    elif name == "admin-analytics-time":
        # The forecast starts at the next whole hour of the portal's zone (not the browser's,
        # which is London here).
        first = page.evaluate(
            "Chart.getChart(document.getElementById('forecast-chart')).data.labels[0]")
        next_hour = (datetime.now(zone).hour + 1) % 24
        assert re.search(rf"\b{next_hour:02d}[:时]", str(first)), (first, next_hour)
