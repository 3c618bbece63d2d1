"""Small things a real browser must get right: the zip button waits for a ticked file (and
without scripts the server explains instead of a bare 400); a download-manager link says
when it expires in the portal's zone and how long is left, in the page's language; staff
pick who may read a file; the demo's own history fills the admin's charts."""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

from tests.helpers import sign_in


def test_zip_button_is_disabled_until_a_file_is_ticked(page):
    sign_in(page, "student")
    page.goto("/")
    button = page.locator("#zip-selected")
    assert button.is_disabled()
    boxes = page.locator("input[name=id]")
    boxes.nth(0).check()
    assert button.is_enabled()
    boxes.nth(0).uncheck()
    assert button.is_disabled()


def test_without_scripts_an_empty_zip_says_what_to_do(browser, demo_server):
    context = browser.new_context(locale="en-US", java_script_enabled=False,
                                  base_url=demo_server.base_url)
    try:
        page = context.new_page()
        sign_in(page, "student")
        page.goto("/?sort=popular")
        assert page.locator("#zip-selected").is_enabled()  # (nothing keeps it disabled)
        page.click("#zip-selected")
        page.wait_for_url("**/?sort=popular")
        alert = page.locator("p.flash[role=alert]")
        assert "Tick the files you want first" in alert.inner_text()
    finally:
        context.close()


def _expiry_shown(page) -> tuple[str, datetime]:
    """Make a download-manager link on a file page; (the expiry shown, the API's)."""
    page.goto("/?category=课程表")
    page.locator("table.files tbody td:nth-child(2) a").first.click()
    page.wait_for_url("**/files/*")
    with page.expect_response("**/links") as info:
        page.click("#make-link")
    expires_at = info.value.json()["expires_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", expires_at)  # ISO 8601
    page.locator("#link-box").wait_for()
    when = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    return page.locator("#link-expiry").inner_text(), when


def test_link_expiry_in_the_portal_zone_and_how_long_is_left(page, browser, demo_server):
    text, when = _expiry_shown_as(page, "student")
    local = when.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M")
    assert text == f"有效期至 {local}（Asia/Shanghai），24小时后过期。"
    context = browser.new_context(locale="en-US", base_url=demo_server.base_url)
    try:
        text, when = _expiry_shown_as(context.new_page(), "2023001")
    finally:
        context.close()
    local = when.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M")
    assert text == f"Valid until {local} (Asia/Shanghai), expires in 24 hours."


def _expiry_shown_as(page, username: str) -> tuple[str, datetime]:
    sign_in(page, username)
    return _expiry_shown(page)


def test_staff_picks_a_group_and_a_person_for_a_file(page):
    """The access picker: choose "members of a group", pick an offered group, save; a
    name nobody has is refused in the form; people are found by their display name."""
    sign_in(page, "staff")
    page.goto("/admin/files")
    page.click("text=线性代数 讲义")
    page.wait_for_url("**/admin/files/*")
    group_input, user_input = page.locator("#access-group"), page.locator("#access-user")
    assert page.locator("#access-kind").input_value() == "group"  # (the demo's rule)
    page.select_option("#access-kind", "login")
    assert group_input.is_hidden() and user_input.is_hidden()
    page.select_option("#access-kind", "group")
    assert group_input.is_visible() and user_input.is_hidden()
    offered = page.locator("#access-groups option").evaluate_all("o => o.map(x => x.value)")
    assert {"CS2023", "MATH2024", "STAFF"} <= set(offered)
    group_input.fill("NOPE")
    page.click("main form button[type=submit] >> nth=0")
    assert "没有名为 NOPE 的用户组。" in page.locator(".field-error:visible").inner_text()
    group_input.fill("CS2023")
    page.click("main form button[type=submit] >> nth=0")
    page.wait_for_selector("p.flash")
    assert "已保存" in page.locator("p.flash").inner_text()
    page.reload()
    assert page.locator("#access-kind").input_value() == "group"
    assert group_input.input_value() == "CS2023"

    page.select_option("#access-kind", "user")
    assert user_input.is_visible() and group_input.is_hidden()
    user_input.press_sequentially("李四")  # a display name: the list follows the typing
    page.wait_for_function(
        "() => { const o = [...document.querySelectorAll('#access-users option')];"
        " return o.length >= 1 && o.length <= 20 && o.some(x => x.value === '2023001'); }")
    user_input.fill("2023001")
    page.click("main form button[type=submit] >> nth=0")
    page.wait_for_selector("p.flash")
    page.goto("/admin/files")
    # the list says it in the picker's words: one person, 2023001
    assert "某一个人（个人文件）：2023001" in page.locator(
        "tr", has_text="线性代数 讲义").inner_text()


def test_the_demo_alone_fills_the_analytics_charts(page):
    """No simulate run: the demo's own seeded history draws the admin's charts."""
    sign_in(page, "admin")
    page.goto("/admin/analytics/")
    page.wait_for_function(
        "() => { const c = document.querySelector('#overview tr[data-key=downloads] td');"
        " return c && Number(c.textContent.replace(/[^0-9]/g, '')) > 100; }")
    rows = page.locator("#top-files tbody tr")
    rows.first.wait_for()
    assert rows.count() >= 5
    assert "模拟文件" not in page.locator("#top-files").inner_text()
    page.goto("/admin/analytics/time")
    page.wait_for_function(
        "() => window.Chart && Chart.getChart(document.getElementById('series-chart'))"
        " && Chart.getChart(document.getElementById('series-chart')).data.datasets.length > 0")
