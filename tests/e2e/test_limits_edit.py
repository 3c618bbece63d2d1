"""An admin changes a download limit through the page, in Chinese: a locked one shows its
reason and no way to edit, bad input says what is wrong, the saved value is in force and
the audit log says what changed in words."""

import json

import pytest
from servers import Gunicorn, make_instance

from tests.helpers import screenshot, sign_in

LIMITS = {"student": {"connections": 4, "rate": "4MB"}, "anonymous": {"connections": 2}}
REASON = "由网络中心统一设定"


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory, redis_url):
    """The demo under limits from the environment, the anonymous one locked."""
    instance = make_instance(tmp_path_factory.mktemp("e2e-limits"), redis_url,
                             PORTAL_DOWNLOAD_LIMITS=json.dumps(LIMITS),
                             PORTAL_DOWNLOAD_LIMITS_LOCKED=json.dumps({"anonymous": REASON}))
    instance.flask("demo", "--big-mb", "1", "--history", "0")
    with Gunicorn(instance, workers=1) as server:
        yield server


def test_an_admin_edits_a_download_limit_in_chinese(page):
    sign_in(page, "admin")
    page.goto("/admin/limits")
    anonymous = page.locator('tr[data-who="anonymous"]')
    assert "已锁定" in anonymous.inner_text() and REASON in anonymous.inner_text()
    assert anonymous.get_by_role("link").count() == 0
    screenshot(page, "admin-limits")
    page.locator('tr[data-who="student"]').get_by_role("link", name="修改").click()
    page.wait_for_url("**/admin/limits/edit?who=student")
    assert page.locator("#connections").input_value() == "4"
    assert page.locator("#rate").input_value() == "4M"

    page.fill("#connections", "-3")
    page.click("#limit-form button[type=submit]")
    error = page.locator("#limit-form .field-error")
    assert error.inner_text() == "同时连接数须为 1 至 10000 之间的整数；留空表示不限。"
    assert page.locator("#connections").input_value() == "-3"  # kept to be corrected
    screenshot(page, "admin-limit-edit-refused")

    page.fill("#connections", "２")  # a Chinese input method's full-width digit
    page.fill("#rate", "1MB")
    page.click("#limit-form button[type=submit]")
    page.wait_for_url("**/admin/limits")
    assert "已保存" in page.locator(".flash").inner_text()
    student = page.locator('tr[data-who="student"]').inner_text()
    assert "\t2\t" in student and "1.0 MB/s" in student and "admin" in student
    screenshot(page, "admin-limits-edited")

    page.goto("/admin/audit")
    text = page.locator("main").inner_text()
    assert "下载限制已修改" in text
    assert "学生：同时连接数 4 → 2；速率 4.0 MB/s → 1.0 MB/s" in text
