"""Refusals that say what happened and what to do: a user group still in use is not
deleted, and the sign-in throttle page speaks of sign-in, the wait, and the way back."""

from tests.helpers import screenshot, sign_in


def test_deleting_a_group_in_use_lists_what_depends_on_it(page):
    sign_in(page, "admin")
    page.goto("/admin/groups")
    page.locator("tr", has_text="CS2023").get_by_role("link", name="删除…").click()
    page.wait_for_url("**/admin/groups/*/delete")
    assert "此用户组暂时不能删除" in page.locator("#group-in-use").inner_text()
    assert "数据结构 第1章 绪论" in page.locator("#group-files").inner_text()
    assert "student" in page.locator("#group-members").inner_text()
    assert page.locator("button[type=submit].danger").count() == 0  # nothing to press
    screenshot(page, "admin-group-delete-refused")
    page.goto("/admin/groups")
    assert "CS2023" in page.locator("main").inner_text()


def test_the_sign_in_throttle_page_leads_back_to_sign_in(page):
    for attempt in range(6):
        page.goto("/login?next=/me/downloads")
        page.fill("input[name=username]", "throttle-e2e")
        page.fill("input[name=password]", f"wrong-{attempt}")
        page.click("main form button[type=submit]")
        page.wait_for_load_state()
    assert page.locator("h1").inner_text() == "429 · 登录尝试次数过多"
    text = page.locator("main").inner_text()
    assert "请等待 1 分钟" in text and "请求过于频繁" not in text
    screenshot(page, "sign-in-throttled")
    page.click("#back")
    page.wait_for_url("**/login?next=/me/downloads")
    assert page.locator("input[name=username]").count() == 1
