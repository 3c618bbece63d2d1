"""What an admin sees: the analytics pages render their charts from the JSON endpoints (the
screenshots of these pages are test_every_page.py's)."""

import pytest

from tests.helpers import sign_in


@pytest.fixture(scope="module")
def simulated(demo_server):
    """A term's worth of synthetic downloads in the demo instance."""
    demo_server.instance.flask("analytics", "simulate", "--events", "20000", "--days", "60",
                               "--users", "300", "--files", "20")
    return demo_server


def test_overview_time_and_file_pages(page, simulated):
    sign_in(page, "admin")
    page.goto("/admin/analytics/")
    page.select_option("select[name=days]", "30")
    page.wait_for_function(
        "() => { const c = document.querySelector('#overview tr[data-key=downloads] td');"
        " return c && c.textContent.trim() !== '' && c.textContent.trim() !== '0'; }")
    rows = page.locator("#top-files tbody tr")
    rows.first.wait_for()
    assert rows.count() >= 5

    page.goto("/admin/analytics/time")
    for chart in ("series-chart", "forecast-chart"):
        page.wait_for_function(
            f"() => window.Chart && Chart.getChart(document.getElementById('{chart}'))"
            f" && Chart.getChart(document.getElementById('{chart}')).data.datasets.length > 0")

    page.goto("/admin/analytics/")
    page.locator("#top-files tbody tr a").first.click()
    page.wait_for_url("**/admin/analytics/files/*")
    page.wait_for_function(
        "() => window.Chart && Chart.getChart(document.getElementById('file-series'))")
