"""Factories for assessment rows (tests/assessments only)."""

from __future__ import annotations

import hashlib
import uuid

import factory
from django.utils import timezone

from assessments.models import AnalyticsEvent, AssessmentSession, Submission
from tests.factories import TenantFactory

# Sessions made by SessionFactory carry this token (as its hash, like real ones); the
# assessments tests' browser_api sends it as X-Session-Token.
SESSION_TOKEN = "test-session-token-0123456789abcdefghijklmnop"


class SessionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AssessmentSession

    tenant = factory.SubFactory(TenantFactory)
    status = AssessmentSession.Status.STARTED
    last_activity_at = factory.LazyFunction(timezone.now)
    token_hash = hashlib.sha256(SESSION_TOKEN.encode()).hexdigest()


class SubmissionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Submission

    id = factory.LazyFunction(uuid.uuid4)
    session = factory.SubFactory(SessionFactory)
    tenant = factory.SelfAttribute("session.tenant")
    answers = factory.LazyFunction(lambda: {"q1": "yes"})
    request_hash = "0" * 64


class EventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AnalyticsEvent

    tenant = factory.SubFactory(TenantFactory)
    message_id = factory.LazyFunction(lambda: str(uuid.uuid4()))
    name = "question_viewed"
    occurred_at = factory.LazyFunction(timezone.now)


def session_body(**overrides) -> dict:
    body = {"sessionId": str(uuid.uuid4()), "status": "started"}
    body.update(overrides)
    return body


def submit_body(session_id=None, **overrides) -> dict:
    body = {
        "submissionId": str(uuid.uuid4()),
        "sessionId": str(session_id or uuid.uuid4()),
        "answers": {"q1": "yes", "q2": 3},
        "result": {"score": 7},
    }
    body.update(overrides)
    return body


def event_body(**overrides) -> dict:
    body = {
        "messageId": str(uuid.uuid4()),
        "name": "question_answered",
        "properties": {"q": "q1"},
        "timestamp": timezone.now().isoformat(),
    }
    body.update(overrides)
    return body
