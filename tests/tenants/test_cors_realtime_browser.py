"""CORS on the ASGI (realtime) server with a cold origins cache, in a real browser.

The origins cache is shared and short-lived (cleared by every key change), so a browser often
meets it cold. The ASGI server must then look the origins up off the event loop; a
synchronous ORM call there raised SynchronousOnlyOperation: 500 for every preflight and for
every response to a request with an Origin header.
"""

import functools
import http.server
import threading

import pytest
from django.core.cache import cache
from django.db import connection

from tests.browser import chromium_browser, chromium_page  # noqa: F401  (fixtures)
from tests.factories import TenantFactory, make_api_key
from tests.outbox.factories import publish
from tests.outbox.helpers import free_port
from tests.outbox.sse import asgi_server

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PAGE = b"<!doctype html><title>tenant site</title><p>a tenant's page</p>"


@pytest.fixture
def site():
    """A tenant's web page on its own origin (another port on loopback)."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def realtime():
    with asgi_server() as url:
        yield url


def closes_db(test):
    """ORM calls made while Playwright's sync API is active get their own connection: close
    it in that same context (as tests/assessments/test_browser.py does)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        try:
            return test(*args, **kwargs)
        finally:
            connection.close()

    return wrapper


FETCH = """async ([url, key]) => {
  try {
    const headers = key ? {Authorization: "Bearer " + key} : {};
    const response = await fetch(url, {headers});
    return {status: response.status, body: await response.json()};
  } catch (error) {
    return {failed: String(error)};
  }
}"""

OPEN_STREAM = """([url, key]) => {
  window.received = [];
  window.streamError = null;
  fetch(url, {headers: {Authorization: "Bearer " + key}}).then(async (response) => {
    window.streamStatus = response.status;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      for (const line of decoder.decode(value).split("\\n")) {
        if (line === ": connected") window.connected = true;
        if (line.startsWith("data: ")) window.received.push(JSON.parse(line.slice(6)));
      }
    }
  }).catch((error) => { window.streamError = String(error); });
}"""


@closes_db
def test_a_page_on_an_allowed_origin_uses_the_realtime_server_with_a_cold_cache(
    chromium_page,  # noqa: F811
    site,
    realtime,
):
    tenant = TenantFactory(name="Acme")
    publishable = make_api_key(tenant, "publishable", origins=[site])
    secret = make_api_key(tenant, "secret")
    page = chromium_page
    page.goto(site + "/")
    stream_url = realtime + "/api/realtime/stream"

    # a preflighted request (Authorization header), origins cache cold
    cache.clear()
    answer = page.evaluate(FETCH, [stream_url, publishable])
    assert answer.get("status") == 403, answer  # the page reads the API's answer
    assert answer["body"]["error"]["code"] == "secret_key_required"

    # a simple request (no preflight) whose response must carry the CORS headers, cache cold
    cache.clear()
    answer = page.evaluate(FETCH, [stream_url, None])
    assert answer.get("status") == 401, answer
    assert answer["body"]["error"]["code"] == "authentication_required"

    # a live stream read by the page (fetch streaming), cache cold
    cache.clear()
    page.evaluate(OPEN_STREAM, [stream_url, secret])
    page.wait_for_function("window.connected || window.streamError", timeout=10000)
    assert page.evaluate("[window.streamStatus, window.streamError]") == [200, None]
    event = publish(tenant, payload={"hello": "browser"})[0]
    page.wait_for_function("window.received.length > 0", timeout=10000)
    received = page.evaluate("window.received")
    assert [(e["id"], e["payload"]) for e in received] == [(str(event.id), {"hello": "browser"})]
