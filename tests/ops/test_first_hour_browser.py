"""The first hour in Debian's Chromium: the docs render with the network cut off, a demo
submission shows up verified in the webhook inspector (a real outbox worker delivers it) and
on the demo page's live panel (a real realtime server, opened with a token), and the console's
pages fit a 1,280 px screen. With ATLAS_SCREENSHOTS=<folder>, each screen is kept there."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.core.management import call_command
from django.db import connections

from outbox.models import Delivery, OutboxEvent
from tests.browser import chromium_browser, chromium_page  # noqa: F401  (fixtures)
from tests.outbox.sse import asgi_server
from tests.processes import manage_popen

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


def keep(page, name: str) -> None:
    folder = os.environ.get("ATLAS_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def offline(page) -> list[str]:
    """Abort every request that leaves this machine; returns the list of those attempted."""
    attempted: list[str] = []

    def route(request_route):
        url = request_route.request.url
        if urlsplit(url).hostname in LOOPBACK or url.startswith(("data:", "blob:")):
            request_route.continue_()
        else:
            attempted.append(url)
            request_route.abort()

    page.route("**/*", route)
    return attempted


def test_api_docs_and_redoc_render_with_no_internet(chromium_page, live_server):  # noqa: F811
    page = chromium_page
    attempted = offline(page)
    try:
        page.goto(f"{live_server.url}/api/docs/")
        page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
        assert page.locator(".swagger-ui .opblock").count() > 20
        assert "Atlas API" in page.inner_text(".swagger-ui .info")
        keep(page, "api-docs")

        page.goto(f"{live_server.url}/api/redoc/")
        page.wait_for_selector("[role=menuitem]", timeout=20_000)
        assert page.locator("h1", has_text="Atlas API").count() == 1
        keep(page, "redoc")
    finally:
        connections.close_all()
    assert attempted == []  # nothing asked for a CDN


@pytest.fixture
def demo_run(live_server, settings, tmp_path):
    """What `make run` sets up, around the live server: the demo tenant with its inbox
    target, the demo extras on, a realtime server and an outbox worker."""
    settings.VAR_DIR = tmp_path
    settings.ATLAS_DEMO_MODE = True
    settings.ASSESSMENTS_DEMO_PUBLISHABLE_KEY = None  # the page reads var/, as in make run
    settings.ATLAS_BASE_URL = live_server.url
    base = live_server.url.replace("localhost", "127.0.0.1")
    call_command("atlas_demo", quiet=True, inbox_url=f"{base}/demo/inbox")
    worker = manage_popen("outbox_worker", OUTBOX_ALLOWED_TARGET_NETWORKS="127.0.0.0/8")
    try:
        with asgi_server() as realtime_url:
            settings.ATLAS_REALTIME_BASE_URL = realtime_url
            yield live_server.url
    finally:
        worker.terminate()
        worker.communicate(timeout=30)


def test_a_demo_submission_arrives_verified_in_the_inspector_and_the_live_panel(
    chromium_browser,  # noqa: F811
    demo_run,
):
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 900})
    demo, inspector = context.new_page(), context.new_page()
    try:
        inspector.goto(f"{demo_run}/demo/inbox")
        inspector.wait_for_selector("#empty")
        demo.goto(f"{demo_run}/demo/")
        demo.wait_for_function(
            "document.getElementById('live-status').textContent === 'live'", timeout=20_000
        )
        keep(demo, "demo-before")
        demo.fill("#email", "ada@example.com")
        demo.fill("#first-name", "Ada")
        demo.click("#start")
        for question, value in (("energy", "High"), ("sleep", "6–8"), ("water", "7+")):
            demo.click(f'button.option[data-question="{question}"][data-value="{value}"]')
        assert demo.text_content("#progress-text") == "3 of 3 answered"
        demo.evaluate(
            """() => {  // remember what the button looked like while the submit was on its way
              const button = document.getElementById("submit");
              window.whileSending = [];
              new MutationObserver(() => window.whileSending.push(
                [button.disabled, button.textContent])).observe(
                button, {attributes: true, childList: true, characterData: true, subtree: true});
            }"""
        )
        demo.click("#submit")
        demo.wait_for_function("document.querySelector('#status').textContent === 'Submitted.'")
        assert demo.text_content("#thanks-title") == "Thank you, Ada!"
        assert [True, "Sending…"] in demo.evaluate("window.whileSending")  # one click, one send

        # the inspector lists the delivery, its signature verified
        card = inspector.wait_for_selector(".delivery", timeout=20_000)
        assert "assessment.submitted" in card.inner_text()
        assert inspector.locator('.delivery [data-verified="true"]').count() == 1
        assert "webhook-signature" in inspector.inner_text(".delivery table.headers")
        assert "ada@example.com" in inspector.inner_text(".delivery pre")
        keep(inspector, "inspector")

        # the live panel got it through the realtime stream
        demo.wait_for_function(
            "window.liveEvents.some((e) => e.eventType === 'assessment.submitted')",
            timeout=20_000,
        )
        assert "assessment.submitted" in demo.inner_text("#live-feed")
        keep(demo, "demo-after")
        event = OutboxEvent.objects.get(event_type="assessment.submitted")
        assert Delivery.objects.get(event=event).status == "delivered"
    finally:
        context.close()
        connections.close_all()


CONSOLE_PAGES = [
    "/admin/",
    "/admin/outbox/outboxevent/",
    "/admin/outbox/delivery/",
    "/admin/outbox/target/",
    "/admin/uploads/attachment/",
    "/admin/payments/paymentsession/",
    "/admin/assessments/assessmentsession/",
    "/admin/tenants/tenant/",
]


def test_console_pages_fit_1280_px(chromium_browser, live_server, world, superuser):  # noqa: F811
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{live_server.url}/admin/login/?next=/admin/")
        page.fill("#id_username", "root")
        page.fill("#id_password", "pw-root-123")
        page.click("input[type=submit]")
        page.wait_for_selector("#atlas-dashboard")
        event = OutboxEvent.objects.filter(deliveries__isnull=False).first()
        delivery = Delivery.objects.filter(attempt_rows__isnull=False).first()
        pages = CONSOLE_PAGES + [
            f"/admin/outbox/outboxevent/{event.pk}/change/",
            f"/admin/outbox/delivery/{delivery.pk}/change/",
        ]
        overflowing = {}
        for path in pages:
            page.goto(f"{live_server.url}{path}")
            assert page.title().endswith("Atlas console"), path
            width = page.evaluate("document.documentElement.scrollWidth")
            if width > 1280:
                overflowing[path] = width
            name = path.strip("/").replace("/", "-") or "admin"
            keep(page, f"console-{name}")
        assert overflowing == {}
        page.goto(f"{live_server.url}/admin/outbox/outboxevent/{event.pk}/change/")
        assert page.locator("input[name=_save]").count() == 0
        assert page.locator("pre.atlas-json").count() == 1
    finally:
        context.close()
        connections.close_all()
