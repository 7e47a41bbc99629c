"""The browser client on the demo page, in Debian's Chromium (skips without it)."""

import functools
import json
import time

import pytest
from django.db import connection
from django.db.models import Count

from assessments.models import AnalyticsEvent, AssessmentSession, Submission
from outbox.models import OutboxEvent
from tests.factories import TenantFactory, make_api_key

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def demo(live_server, settings):
    tenant = TenantFactory(name="Demo")
    settings.ASSESSMENTS_DEMO_PUBLISHABLE_KEY = make_api_key(
        tenant, "publishable", origins=[live_server.url]
    )
    return live_server.url + "/demo/"


def closes_db(test):
    """ORM calls made while Playwright's sync API is active get their own connection (another
    context than the fixtures'): close it in that same context, or the test database cannot
    be dropped at the end of the run."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        try:
            return test(*args, **kwargs)
        finally:
            connection.close()

    return wrapper


def wait_for(predicate, timeout=10.0, page=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if page is not None:
            page.wait_for_timeout(100)
        else:
            time.sleep(0.1)
    return predicate()


def api_posts(page, path):
    """Collect the JSON bodies the page POSTs to `path` (fetch and beacons)."""
    bodies = []

    def on_request(request):
        if request.method == "POST" and request.url.split("?")[0].endswith(path):
            bodies.append(json.loads(request.post_data or "null"))

    page.on("request", on_request)
    return bodies


def test_demo_page_without_key_explains_what_to_do(client, settings, tmp_path):
    settings.ASSESSMENTS_DEMO_PUBLISHABLE_KEY = None
    settings.VAR_DIR = tmp_path
    response = client.get("/demo/")
    assert response.status_code == 200
    assert b'id="no-key"' in response.content and b"atlas_demo" in response.content


@closes_db
def test_submit_that_fails_once_is_retried_with_same_id_and_stored_once(demo, chromium_page):
    page = chromium_page
    submits = api_posts(page, "/api/assessments/submit")
    calls = []

    def fail_first(route):
        calls.append(route.request.url)
        if len(calls) == 1:
            # The server stores it, but the response is lost: the worst case for a retry.
            route.fetch()
            route.fulfill(status=503, content_type="application/json", body='{"error":{}}')
        else:
            route.continue_()

    page.route("**/api/assessments/submit", fail_first)
    page.goto(demo)
    page.fill("#email", "ada@example.com")
    page.click("#start")
    for question, value in (("energy", "Low"), ("sleep", "6–8"), ("water", "7+")):
        page.click(f'button.option[data-question="{question}"][data-value="{value}"]')
    page.click("#submit")
    page.wait_for_function("document.querySelector('#status').textContent === 'Submitted.'")

    assert len(calls) == 2
    assert submits[0]["submissionId"] == submits[1]["submissionId"]
    submission = Submission.objects.get()
    assert str(submission.id) == submits[0]["submissionId"]
    assert submission.answers == {"energy": "Low", "sleep": "6–8", "water": "7+"}
    assert OutboxEvent.objects.filter(event_type="assessment.submitted").count() == 1
    session = AssessmentSession.objects.get()
    assert (session.status, session.email) == ("completed", "ada@example.com")
    assert json.loads(page.text_content("#result"))["id"] == submits[0]["submissionId"]


@closes_db
def test_rapid_events_arrive_batched(demo, chromium_page):
    page = chromium_page
    page.goto(demo)
    page.click("#start")
    # 25 real DOM clicks in one tick: as fast as a user could ever produce events
    page.evaluate(
        "() => { const b = document.querySelectorAll('button.option');"
        " for (let i = 0; i < 25; i++) b[i % b.length].click(); }"
    )
    expected = 26  # assessment_started + 25 option_selected

    assert wait_for(lambda: AnalyticsEvent.objects.count() == expected, timeout=10)
    # One INSERT per request shares one now(): rows per created_at = the batch sizes.
    sizes = sorted(
        AnalyticsEvent.objects.values("created_at")
        .annotate(n=Count("id"))
        .values_list("n", flat=True)
    )
    assert sizes == [6, 20], sizes  # 20 at once, the rest on the 2 s timer
    assert page.evaluate("window.atlas.stats.flushes") == 2
    assert AnalyticsEvent.objects.filter(name="option_selected").count() == 25


@closes_db
def test_closing_the_page_marks_abandoned_and_flushes_events(demo, chromium_page):
    page = chromium_page
    page.goto(demo)
    page.click("#start")
    with page.expect_response("**/answers"):
        page.click('button.option[data-question="energy"][data-value="High"]')
    page.click('button.option[data-question="sleep"][data-value="< 6"]')
    page.wait_for_function("window.atlas.queue.length === 3")  # queued, not yet flushed
    session_id = page.evaluate("window.atlas.sessionId")
    assert AnalyticsEvent.objects.count() == 0

    page.close(run_before_unload=True)

    assert wait_for(
        lambda: AssessmentSession.objects.filter(pk=session_id, status="abandoned").exists()
    )
    assert wait_for(lambda: AnalyticsEvent.objects.filter(session_id=session_id).count() == 3)
    session = AssessmentSession.objects.get(pk=session_id)
    assert session.abandoned_at is not None


@closes_db
def test_failed_event_flush_never_blocks_and_is_resent(demo, chromium_page):
    page = chromium_page
    aborted = []

    def drop_first(route):
        if not aborted:
            aborted.append(route.request.url)
            route.abort()  # the network fails: the page must not notice
        else:
            route.continue_()

    page.route("**/api/assessments/events", drop_first)
    page.goto(demo)
    page.click("#start")
    page.evaluate("() => { for (let i = 0; i < 19; i++) window.atlas.track('tick', {i}); }")
    for question, value in (("energy", "Okay"), ("sleep", "> 8"), ("water", "0–2")):
        page.click(f'button.option[data-question="{question}"][data-value="{value}"]')
    page.click("#submit")
    page.wait_for_function("document.querySelector('#status').textContent === 'Submitted.'")

    assert aborted and Submission.objects.count() == 1
    # started + 19 ticks + 3 options + submitted, each stored exactly once after the resend
    # page= keeps Playwright's loop turning: route handlers only run while it does
    assert wait_for(lambda: AnalyticsEvent.objects.count() == 24, timeout=10, page=page)
    assert AnalyticsEvent.objects.values("message_id").distinct().count() == 24


@closes_db
def test_the_session_token_rides_every_call_and_a_reload_resumes(demo, chromium_page):
    page = chromium_page
    calls = []  # (method, path, session token sent) of every assessments call but events

    def on_request(request):
        path = request.url.split("?")[0]
        if "/api/assessments/" in path and not path.endswith("/events"):
            sent = request.headers.get("x-session-token")
            if sent is None and request.post_data and '"sessionToken"' in request.post_data:
                sent = json.loads(request.post_data)["sessionToken"]  # the abandon beacon
            calls.append((request.method, path, sent))

    page.on("request", on_request)
    page.goto(demo)
    page.fill("#email", "ada@example.com")
    with page.expect_response("**/api/assessments/session") as created:
        page.click("#start")
    body = created.value.json()
    token = body["sessionToken"]
    assert created.value.status == 201 and len(token) >= 40
    assert "email" not in body and "formData" not in body  # the public key reads no PII
    session_id = page.evaluate("window.atlas.sessionId")
    assert page.evaluate(f"sessionStorage.getItem('atlas.sessionToken.{session_id}')") == token
    for question, value in (("energy", "Low"), ("sleep", "6–8")):
        with page.expect_response("**/answers"):
            page.click(f'button.option[data-question="{question}"][data-value="{value}"]')

    page.reload()
    assert page.evaluate("window.atlasResumed") is True
    assert page.get_attribute('button[data-question="energy"][data-value="Low"]', "aria-pressed")
    assert page.text_content("#status").startswith("Resumed: answered 2")
    page.click('button.option[data-question="water"][data-value="7+"]')
    page.click("#submit")
    page.wait_for_function("document.querySelector('#status').textContent === 'Submitted.'")

    first_call, *later = calls
    assert first_call == ("POST", f"{demo[: -len('/demo/')]}/api/assessments/session", None)
    assert later and all(sent == token for _method, _path, sent in later), later
    assert ("GET", f"{demo[: -len('/demo/')]}/api/assessments/session/{session_id}", token) in later
    session = AssessmentSession.objects.get(pk=session_id)
    assert (session.status, session.email) == ("completed", "ada@example.com")
    assert session.responses == {"energy": "Low", "sleep": "6–8", "water": "7+"}

    # Anyone else with the public key and the session id (no token) reads nothing.
    stranger = page.context.browser.new_page()
    try:
        stranger.goto(demo)
        refused = stranger.evaluate(
            """async ([id, key]) => {
                const r = await fetch(`/api/assessments/session/${id}`,
                                      {headers: {Authorization: `Bearer ${key}`}});
                return [r.status, await r.text()];
            }""",
            [
                session_id,
                page.evaluate("JSON.parse(document.getElementById('atlas-key').textContent)"),
            ],
        )
    finally:
        stranger.close()
    assert refused[0] == 403 and "session_token_required" in refused[1]
    assert "ada@example.com" not in refused[1]


@closes_db
def test_a_lost_session_token_makes_the_client_carry_on_with_a_fresh_session(demo, chromium_page):
    page = chromium_page
    lost = []

    def lose_first_answer(route):
        if not lost:
            # The server creates the session, but its answer (and token) never arrives.
            lost.append(route.fetch().json()["sessionToken"])
            route.fulfill(status=503, content_type="application/json", body='{"error":{}}')
        else:
            route.continue_()

    page.route("**/api/assessments/session", lose_first_answer)
    page.goto(demo)
    page.fill("#email", "bo@example.com")
    page.click("#start")
    page.wait_for_function("window.atlas.sessionToken !== null")
    for question, value in (("energy", "High"), ("sleep", "< 6"), ("water", "3–6")):
        page.click(f'button.option[data-question="{question}"][data-value="{value}"]')
    page.click("#submit")
    page.wait_for_function("document.querySelector('#status').textContent === 'Submitted.'")

    assert lost and page.evaluate("window.atlas.sessionToken") != lost[0]
    submission = Submission.objects.get()
    assert str(submission.session_id) == page.evaluate("window.atlas.sessionId")
    assert submission.session.email == "bo@example.com"  # the fields were sent again
    assert AssessmentSession.objects.count() == 2  # the orphan keeps its start, nothing more
