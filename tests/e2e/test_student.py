"""What a student does in a browser: sign in, search, open a file, download it, switch
language, get a download-manager link."""

import hashlib
import urllib.request

from tests.helpers import screenshot, sign_in


def test_sign_in_search_open_and_download(page, demo_server):
    page.goto("/login")
    assert page.locator("h1").inner_text() == "登录"
    screenshot(page, "login")
    sign_in(page, "student")
    assert "张三" in page.locator("header").inner_text()
    screenshot(page, "catalog")
    # personal documents of others never show
    assert "李四的成绩单" not in page.content()
    page.fill("input[name=q]", "数据结构")
    page.click("form.search button")
    page.wait_for_url("**/?q=*")
    titles = page.locator("table.files tbody td:nth-child(2) a").all_inner_texts()
    assert len(titles) == 4 and all("数据结构" in t for t in titles)
    page.goto("/?category=课程表")
    page.click("text=计算机2023级课程表")
    page.wait_for_url("**/files/*")
    sha = page.locator("#sha256").inner_text().strip()
    screenshot(page, "file-page")
    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.suggested_filename == "计算机2023级课程表.pdf"
    with open(download.path(), "rb") as fh:
        data = fh.read()
    assert hashlib.sha256(data).hexdigest() == sha and data.startswith(b"%PDF")


def test_language_switch(page):
    sign_in(page, "student")
    assert page.locator("#lang-switch").inner_text() == "English"
    page.click("#lang-switch")
    page.wait_for_load_state()
    assert "Search" in page.locator("form.search button").inner_text()
    screenshot(page, "catalog-en")
    page.click("#lang-switch")
    page.wait_for_load_state()
    assert "搜索" in page.locator("form.search button").inner_text()


def test_download_manager_link(page, demo_server):
    sign_in(page, "student")
    page.goto("/?q=课堂录像")
    page.click("text=数据结构 第1讲 课堂录像")
    page.click("#make-link")
    page.wait_for_selector("#link-box:not([hidden])")
    url = page.input_value("#link-url")
    assert "/d/" in url
    assert page.locator("#cmd-aria2c").inner_text().startswith("aria2c -x 8 -s 8 -c -o ")
    assert page.locator("#cmd-wget").inner_text().startswith("wget -c -O ")
    assert page.locator("#cmd-curl").inner_text().startswith("curl -fL -C - -o ")
    screenshot(page, "file-page-manager-link")
    sha = page.locator("#sha256").inner_text().strip()
    with urllib.request.urlopen(url, timeout=30) as resp:  # no cookie: the link alone
        assert hashlib.sha256(resp.read()).hexdigest() == sha


def test_phone_width(browser, demo_server):
    context = browser.new_context(locale="zh-CN", base_url=demo_server.base_url,
                                  viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    try:
        sign_in(page, "student")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390 + 1, f"horizontal scrolling on a phone: {width}px"
        screenshot(page, "catalog-phone")
    finally:
        context.close()


def test_admin_pages(page):
    sign_in(page, "admin")
    page.goto("/admin/users")
    assert "student" in page.content()
    screenshot(page, "admin-users")
    page.goto("/admin/audit")
    assert "login.success" in page.content()
    screenshot(page, "admin-audit")


def test_zip_of_two_files(page, demo_server):
    import io
    import zipfile

    sign_in(page, "student")
    page.goto("/?category=课程表")
    boxes = page.locator("input[name=id]")
    assert boxes.count() >= 2
    boxes.nth(0).check()
    boxes.nth(1).check()
    titles = page.locator("table.files tbody td:nth-child(2) a").all_inner_texts()[:2]
    with page.expect_download() as info:
        page.click("#zip-selected")
    download = info.value
    assert download.suggested_filename.endswith(".zip")
    with open(download.path(), "rb") as fh:
        archive = zipfile.ZipFile(io.BytesIO(fh.read()))
    assert archive.testzip() is None
    assert len(archive.namelist()) == 2
    assert all(name.endswith(".pdf") for name in archive.namelist()), archive.namelist()
    assert titles  # the two rows picked were real files
