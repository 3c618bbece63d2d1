"""Words a Chinese reader trips over: roles in English on the users page, and a browser
title that named another site than the header (issue 18)."""

from __future__ import annotations

import re


def test_roles_are_shown_in_the_pages_language(app, client, make_user, login):
    make_user("root", role="admin")
    make_user("zhang", role="staff")
    login("root")
    page = client.get("/admin/users").get_data(as_text=True)
    cells = re.findall(r"<td>([^<]*)</td>", page)
    assert "管理员" in cells and "教职工" in cells
    assert not {"admin", "staff", "student"} & set(cells)
    assert ">学生</option>" in page  # the role picker too
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    client.post("/lang/en", data={"csrf_token": token, "next": "/admin/users"})
    english = client.get("/admin/users").get_data(as_text=True)
    assert "Administrator" in english and "Staff" in english


def test_the_title_names_the_site_the_header_does(client):
    page = client.get("/login").get_data(as_text=True)
    title = re.search(r"<title>(.*?)</title>", page).group(1)
    brand = re.search(r'<a class="brand"[^>]*>(.*?)</a>', page).group(1)
    assert title.endswith(" · " + brand) and "网上服务大厅" not in page
    home = client.get("/").get_data(as_text=True)
    assert re.search(r"<title>(.*?)</title>", home).group(1).count(brand) == 1
