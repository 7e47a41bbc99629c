"""The dashboard in Debian's Chromium: log in through the real admin form, see the SVG
charts drawn, follow a number to its list, keep a screenshot."""

from __future__ import annotations

import pytest
from django.db import connections

from tests.browser import chromium_browser, chromium_page  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_dashboard_renders_its_charts_in_a_real_browser(
    chromium_page,  # noqa: F811
    live_server,
    world,
    superuser,
    tmp_path,
):
    page = chromium_page
    try:
        page.goto(f"{live_server.url}/admin/login/?next=/admin/")
        page.fill("#id_username", "root")
        page.fill("#id_password", "pw-root-123")
        page.click("input[type=submit]")
        page.wait_for_selector("#atlas-dashboard")

        for chart in ("#chart-uploads", "#chart-assessments"):
            box = page.locator(chart).bounding_box()
            assert box and box["width"] > 300 and box["height"] > 150
            # seven days of bars, with real drawn segments (height > 0 in layout)
            assert page.locator(f"{chart} g.bar").count() == 7
            heights = page.eval_on_selector_all(
                f"{chart} rect[data-series]", "els => els.map(e => e.getBBox().height)"
            )
            assert heights and all(h > 0 for h in heights)
        assert page.locator("#chart-uploads rect[data-series=succeeded]").count() == 1
        assert page.locator("#chart-assessments circle.rate-point").count() == 2
        assert page.locator("#section-tenants tr[data-tenant]").count() == 2

        screenshot = tmp_path / "dashboard.png"
        page.screenshot(path=str(screenshot), full_page=True)
        assert screenshot.stat().st_size > 10_000

        # a number is a link to the list of the same rows
        page.click("[data-figure=outbox-dead] a")
        page.wait_for_selector("#result_list")
        assert "status__exact=dead" in page.url
        assert page.locator("#result_list tbody tr").count() == 1
    finally:
        # ORM calls made while Playwright's loop runs use a context-local connection that
        # pytest-django does not know about: close it, or the test database cannot be dropped.
        connections.close_all()
