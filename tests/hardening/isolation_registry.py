"""For every API route that takes an id: how to make tenant B's object it addresses.

Each entry maps the route (as written in the URLconf, prefixed with api/) to a function
`(tenant) -> dict of URL kwargs` that creates one object of that tenant. The matrix test fails
for any id-taking route missing here, so a new endpoint cannot ship without isolation proof.
"""

from __future__ import annotations

from django.db import transaction

from tenants.services import apikey_create


def _api_key(tenant):
    with transaction.atomic():
        key, _raw = apikey_create(tenant=tenant, kind="secret")
    return {"key_id": key.id}


def _session(tenant):
    from tests.assessments.factories import SessionFactory

    return {"session_id": SessionFactory(tenant=tenant).id}


def _submission(tenant):
    from tests.assessments.factories import SubmissionFactory

    return {"submission_id": SubmissionFactory(session__tenant=tenant).id}


def _payment_session(tenant):
    from tests.payments.factories import PaymentSessionFactory

    return {"payment_session_id": PaymentSessionFactory(tenant=tenant).id}


def _attachment(tenant):
    from tests.uploads.factories import staged_attachment

    return {"attachment_id": staged_attachment(tenant).id}


def _outbox_event(tenant):
    from tests.outbox.factories import publish

    return {"event_id": publish(tenant)[0].id}


def _target(tenant):
    from tests.outbox.factories import make_target

    return {"name": make_target(tenant, name="isolated").name}


REGISTRY = {
    "api/keys/<uuid:key_id>/revoke": _api_key,
    "api/assessments/session/<str:session_id>": _session,
    "api/assessments/session/<str:session_id>/answers": _session,
    "api/assessments/submissions/<str:submission_id>": _submission,
    "api/payments/sessions/<str:payment_session_id>": _payment_session,
    "api/uploads/<uuid:attachment_id>": _attachment,
    "api/uploads/tus/<uuid:attachment_id>": _attachment,
    "api/outbox/events/<uuid:event_id>": _outbox_event,
    "api/outbox/targets/<slug:name>/secret": _target,
    "api/outbox/targets/<slug:name>/rotate-secret": _target,
}


# A well-formed request per route, so the 404 proves isolation and not input validation.
REQUEST_SHAPES = {
    "api/assessments/session/<str:session_id>/answers": {
        "body": '{"questionId": "q1", "answer": "yes"}',
    },
    "api/uploads/tus/<uuid:attachment_id>": {
        "body": "abc",
        "content_type": "application/offset+octet-stream",
        "headers": {"HTTP_TUS_RESUMABLE": "1.0.0", "HTTP_UPLOAD_OFFSET": "0"},
    },
}
