"""For every API route that takes an id: how to make tenant B's object it addresses.

Each entry maps the route (as written in the URLconf, prefixed with api/) to a function
`(tenant) -> dict of URL kwargs` that creates one object of that tenant. The matrix test fails
for any id-taking route missing here, so a new endpoint cannot ship without isolation proof.
"""

from __future__ import annotations

import uuid

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


def _allowed_price(tenant):
    from payments.services.prices import allowed_price_add

    allowed_price_add(tenant_id=tenant.id, price_id="price_isolated")
    return {"price_id": "price_isolated"}


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
    "api/payments/prices/<str:price_id>": _allowed_price,
    "api/uploads/<uuid:attachment_id>": _attachment,
    "api/uploads/tus/<uuid:attachment_id>": _attachment,
    "api/outbox/events/<uuid:event_id>": _outbox_event,
    "api/outbox/targets/<slug:name>": _target,
    "api/outbox/targets/<slug:name>/replay": _target,
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


# --- publishable keys and session tokens ----------------------------------------------------
# Every browser route that reads or writes one assessment session, and how to address session
# `s` (URL kwargs and/or a JSON body). With the tenant's own publishable key and no, or a
# wrong, X-Session-Token each is refused (403) and changes nothing. The matrix fails for a
# browser route under api/assessments/ that is in neither table.
SESSION_SCOPED = {
    "api/assessments/session": {
        "body": lambda s: {"sessionId": str(s.id), "status": "abandoned", "email": "x@evil.test"},
    },
    "api/assessments/session/<str:session_id>": {
        "kwargs": lambda s: {"session_id": s.id},
        "body": lambda s: {},
    },
    "api/assessments/session/<str:session_id>/answers": {
        "kwargs": lambda s: {"session_id": s.id},
        "body": lambda s: {"questionId": "q1", "answer": "forged"},
    },
    "api/assessments/submit": {
        "body": lambda s: {
            "submissionId": str(uuid.uuid4()),
            "sessionId": str(s.id),
            "answers": {"q1": "forged"},
            "email": "x@evil.test",
        },
    },
}

# Browser routes under api/assessments/ that need no session token, and why.
TOKEN_EXEMPT = {
    "api/assessments/events": "best-effort analytics: no token, no per-event work",
}
