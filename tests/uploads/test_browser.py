"""static/atlas/uploads.js in Debian's Chromium (Playwright) against a live server: a file
picked while offline is kept in IndexedDB and stored exactly once when the browser is back."""

from __future__ import annotations

import time

import pytest
from django.db import connections

from outbox.models import OutboxEvent
from tests.browser import chromium_browser  # noqa: F401  (fixture)
from tests.factories import make_api_key
from uploads.models import Attachment, RetryLog

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PAGE = """<!doctype html>
<html><body>
<input type="file" id="file">
<pre id="log"></pre>
<script type="module">
  import { AtlasUploads } from "/static/atlas/uploads.js";
  const uploads = new AtlasUploads({ apiKey: "%(key)s", chunkSize: 64 * 1024 });
  window.uploads = uploads;
  window.events = [];
  for (const type of ["queued", "uploaded", "synced", "error", "rejected"]) {
    uploads.addEventListener(type, (e) => window.events.push({ type, ...e.detail }));
  }
  document.getElementById("file").addEventListener("change", async (e) => {
    window.lastUpload = await uploads.upload(e.target.files[0]);
  });
  uploads.start();
  window.ready = true;
</script>
</body></html>
"""


def _open_demo_page(browser, origin: str, tenant):
    """A fresh browser context on PAGE (served at the live server's origin), ready."""
    key = make_api_key(tenant, "publishable", origins=[origin])
    context = browser.new_context()
    page = context.new_page()
    page.route(
        f"{origin}/uploads-demo",
        lambda route: route.fulfill(body=PAGE % {"key": key}, content_type="text/html"),
    )
    try:
        page.goto(f"{origin}/uploads-demo")
        page.wait_for_function("window.ready === true")
    except Exception:
        context.close()
        raise
    return context, page


def _wait(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_file_picked_offline_is_stored_exactly_once_when_back_online(
    chromium_browser,  # noqa: F811
    live_server,
    tenant,
    storage_switch,
):
    origin = live_server.url
    context, page = _open_demo_page(chromium_browser, origin, tenant)
    try:
        page.wait_for_function("window.events.some((e) => e.type === 'synced')")  # empty flush

        context.set_offline(True)
        content = b"answers scanned while the train was in a tunnel\n" * 3000  # ~150 KB
        page.set_input_files(
            "#file", files=[{"name": "scan.txt", "mimeType": "text/plain", "buffer": content}]
        )
        page.wait_for_function("window.lastUpload !== undefined")
        pending = page.evaluate("uploads.pending()")
        assert len(pending) == 1 and pending[0]["size"] == len(content)
        assert Attachment.objects.count() == 0  # nothing reached the server

        retry_runs_before = RetryLog.objects.filter(source="client-sync").count()
        context.set_offline(False)  # fires `online`: the queue is flushed
        page.wait_for_function(
            "window.events.filter((e) => e.type === 'synced').length >= 2", timeout=20000
        )
        assert page.evaluate("uploads.pending()") == []

        upload_id = page.evaluate("window.lastUpload.id")
        assert _wait(lambda: Attachment.objects.filter(status="stored").exists())
        attachment = Attachment.objects.get()
        assert str(attachment.pk) == upload_id
        assert (attachment.tenant_id, attachment.channel, attachment.size) == (
            tenant.pk,
            "tus",
            len(content),
        )
        assert [p.read_bytes() for p in storage_switch.files()] == [content]
        assert OutboxEvent.objects.filter(event_type="upload.stored").count() == 1
        assert RetryLog.objects.filter(source="client-sync").count() == retry_runs_before + 1

        # Going offline and online again sends nothing twice.
        context.set_offline(True)
        context.set_offline(False)
        page.wait_for_function("window.events.filter((e) => e.type === 'synced').length >= 3")
        assert Attachment.objects.count() == 1
        assert OutboxEvent.objects.filter(event_type="upload.stored").count() == 1
        errors = page.evaluate("window.events.filter((e) => e.type === 'error')")
        assert errors == []
    finally:
        context.close()
        # ORM calls made while Playwright's loop runs use a context-local connection that
        # pytest-django does not know about: close it, or the test database cannot be dropped.
        connections.close_all()


def test_file_the_server_refuses_leaves_the_queue_with_its_error_code(
    chromium_browser,  # noqa: F811
    live_server,
    tenant,
    settings,
):
    settings.UPLOADS_MAX_BYTES = 1000
    origin = live_server.url
    context, page = _open_demo_page(chromium_browser, origin, tenant)
    try:
        page.wait_for_function("window.events.some((e) => e.type === 'synced')")
        # The file is picked while a flush is still running (its /retry call is held back):
        # it must be sent by a follow-up flush, not wait for the next `online` event.
        page.evaluate(
            """async () => {
                const realFetch = window.fetch;
                window.fetch = (url, options) => String(url).endsWith("/retry")
                    ? new Promise((ok) => setTimeout(ok, 500)).then(() => realFetch(url, options))
                    : realFetch(url, options);
                const running = uploads.flush();
                await uploads.upload(new File([new Uint8Array(5000)], "big.bin",
                                              { type: "application/pdf" }));
                await running;
            }"""
        )
        page.wait_for_function("window.events.some((e) => e.type === 'rejected')")
        rejected = page.evaluate("window.events.find((e) => e.type === 'rejected')")
        assert (rejected["code"], rejected["status"]) == ("file_too_large", 413)
        assert page.evaluate("uploads.pending()") == []
        assert Attachment.objects.count() == 0
    finally:
        context.close()
        connections.close_all()
