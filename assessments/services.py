"""Assessment writes: session upsert, atomic answers, idempotent submissions, events.

PostgreSQL is the guarantee here: every write is one conditional statement (upsert with a
transition guard, `responses || patch`, `ON CONFLICT DO NOTHING`), never read-modify-write.
Raw SQL below always carries `tenant_id` in its WHERE / VALUES: it is the tenant choke point
for statements the ORM cannot express.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import timedelta
from typing import NamedTuple

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Case, F, JSONField, Value, When
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Now
from django.utils import timezone

from assessments import metrics
from assessments.models import AnalyticsEvent, AssessmentSession, Submission
from core.errors import DomainError, ErrorKind
from core.session_proof import SessionProof, token_issue
from outbox.services import event_publish
from tenants import rls
from tenants.scoping import tenant_get_or_404, tenant_queryset

logger = logging.getLogger(__name__)
Status = AssessmentSession.Status
TenantId = uuid.UUID | str  # a request's tenant_id is the key principal's str

# The one table of allowed status moves. Anything else (backwards, out of `completed`) is
# ignored: a late or repeated update returns the current state instead of rewinding it.
TRANSITIONS: dict[str, set[str]] = {
    Status.STARTED: {Status.IN_PROGRESS, Status.COMPLETED, Status.ABANDONED},
    Status.IN_PROGRESS: {Status.COMPLETED, Status.ABANDONED},
    Status.ABANDONED: {Status.IN_PROGRESS, Status.COMPLETED},
    Status.COMPLETED: set(),
}
_MOVES = [f"{old}>{new}" for old, targets in TRANSITIONS.items() for new in targets]

_SESSION_UPSERT = f"""
INSERT INTO {AssessmentSession._meta.db_table} AS s
    (id, tenant_id, status, email, first_name, form_data, responses, metadata,
     completed_at, abandoned_at, last_activity_at, created_at, updated_at, token_hash)
VALUES (%(id)s, %(tenant_id)s, %(status)s, %(email)s, %(first_name)s, %(form_data)s::jsonb,
        %(responses)s::jsonb, %(metadata)s::jsonb,
        CASE WHEN %(status)s = 'completed' THEN %(now)s END,
        CASE WHEN %(status)s = 'abandoned' THEN %(now)s END,
        %(now)s, %(now)s, %(now)s, %(token_hash)s)
ON CONFLICT (id) DO UPDATE SET
    status = CASE WHEN s.status || '>' || EXCLUDED.status = ANY(%(moves)s)
                  THEN EXCLUDED.status ELSE s.status END,
    email = COALESCE(EXCLUDED.email, s.email),
    first_name = COALESCE(EXCLUDED.first_name, s.first_name),
    form_data = s.form_data || EXCLUDED.form_data,
    responses = s.responses || EXCLUDED.responses,
    metadata = s.metadata || EXCLUDED.metadata,
    completed_at = CASE WHEN EXCLUDED.status = 'completed' THEN EXCLUDED.updated_at
                        ELSE s.completed_at END,
    abandoned_at = CASE WHEN s.status || '>' || EXCLUDED.status = ANY(%(moves)s)
                             AND EXCLUDED.status = 'abandoned'
                        THEN EXCLUDED.updated_at ELSE s.abandoned_at END,
    last_activity_at = EXCLUDED.updated_at,
    updated_at = EXCLUDED.updated_at
-- another tenant's id is never touched; a completed session is final (fields included);
-- with a publishable key only the holder of the session's token changes it
WHERE s.tenant_id = EXCLUDED.tenant_id AND s.status <> 'completed'
  AND (%(trusted)s OR s.token_hash = %(presented_hash)s)
RETURNING s.*, (xmax = 0) AS inserted
"""


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class SessionUpsert(NamedTuple):
    session: AssessmentSession
    created: bool
    token: str | None  # the new session's token: handed out once, never stored


def session_upsert(
    *,
    tenant_id: TenantId,
    session_id: uuid.UUID,
    status: str,
    email: str | None = None,
    first_name: str | None = None,
    form_data: dict | None = None,
    metadata: dict | None = None,
    responses: dict | None = None,
    proof: SessionProof | None = None,
    savepoint: bool = True,
) -> SessionUpsert:
    """Create or move a session forward in one statement.

    Safe out of order and under concurrency: the transition guard lives in the UPDATE, and
    so does the token check for publishable-key callers (`proof`; None: a trusted caller).
    A new session gets a token; only its digest is stored. `savepoint=False`: the caller's
    transaction ends on any error (no savepoint around the upsert, see rls.refusal_is_not_found).
    """
    token, digest = token_issue()
    params = {
        "id": session_id,
        "tenant_id": tenant_id,
        "status": status,
        "email": email,
        "first_name": first_name,
        "form_data": _json(form_data or {}),
        "responses": _json(responses or {}),
        "metadata": _json(metadata or {}),
        "now": timezone.now(),
        "moves": _MOVES,
        "token_hash": digest,
        "trusted": proof is None,
        "presented_hash": proof.digest if proof else None,
    }
    # raw() applies the model's field converters to the RETURNING row: no second SELECT.
    with rls.refusal_is_not_found(savepoint=savepoint):  # the id is another tenant's session
        rows = list(AssessmentSession.objects.raw(_SESSION_UPSERT, params))
    if rows:
        created = rows[0].inserted  # type: ignore[attr-defined]  # RETURNING's extra column
        return SessionUpsert(rows[0], created, token if created else None)
    # No row returned: another tenant's (404), the token does not match (403), or the
    # session is completed (returned unchanged).
    session = tenant_get_or_404(AssessmentSession, tenant_id=tenant_id, pk=session_id)
    if proof is not None:
        proof.check(session.token_hash)
    return SessionUpsert(session, False, None)


def session_answers_merge(
    *,
    tenant_id: TenantId,
    session_id: uuid.UUID,
    answers: dict,
    proof: SessionProof | None = None,
) -> AssessmentSession:
    """Merge answers into `responses` with ONE UPDATE (`responses || patch`).

    Concurrent answers to different questions never overwrite each other: PostgreSQL
    serialises the row update and each one merges into the latest version. With a `proof`
    (publishable key) the UPDATE also matches the session's token digest.
    """
    patch = Value(answers, output_field=JSONField())
    target = tenant_queryset(AssessmentSession, tenant_id=tenant_id).filter(pk=session_id)
    if proof is not None:
        digest = proof.digest
        target = target.filter(token_hash=digest) if digest else target.none()
    changed = target.exclude(status=Status.COMPLETED).update(
        responses=CombinedExpression(F("responses"), "||", patch, output_field=JSONField()),
        # answering resumes a started or abandoned session
        status=Case(
            When(status__in=[Status.STARTED, Status.ABANDONED], then=Value(Status.IN_PROGRESS)),
            default=F("status"),
        ),
        last_activity_at=Now(),
        updated_at=Now(),
    )
    session = tenant_get_or_404(AssessmentSession, tenant_id=tenant_id, pk=session_id)
    if not changed:
        if proof is not None:
            proof.check(session.token_hash)
        raise DomainError(
            "session_completed",
            "This session is completed; its answers can no longer change.",
            kind=ErrorKind.CONFLICT,
            details={"sessionId": str(session_id)},
        )
    return session


def request_hash(body: dict) -> str:
    """The canonical request: same keys and values in any order hash the same."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


_SUBMISSION_INSERT = f"""
INSERT INTO {Submission._meta.db_table}
    (id, tenant_id, session_id, answers, result, metadata, request_hash, created_at, updated_at)
VALUES (%s, %s, %s, %s::jsonb, %s::jsonb, %s::jsonb, %s, %s, %s)
ON CONFLICT (id) DO NOTHING
RETURNING *
"""


def submission_create(
    *,
    tenant_id: TenantId,
    submission_id: uuid.UUID,
    session_id: uuid.UUID,
    answers: dict,
    result: dict | None = None,
    metadata: dict | None = None,
    email: str | None = None,
    first_name: str | None = None,
    body_hash: str,
    proof: SessionProof | None = None,
) -> tuple[Submission, bool]:
    """Store a submission once per submissionId; returns (submission, created).

    ON CONFLICT DO NOTHING waits for a concurrent insert of the same id to commit, so 20
    identical requests produce one row, one completed session and one outbox event; the
    other 19 read the winner's row and compare payload hashes.

    With a `proof` (publishable key) the session must exist and the token match, checked
    first, so neither a new submission nor a replay reaches a session the caller did not
    create (a browser creates its session, and gets its token, before it submits; a retried
    submit then still holds the token). Trusted callers may submit into a new session.
    """
    now = timezone.now()
    params = [
        submission_id,
        tenant_id,
        session_id,  # the FK is DEFERRABLE: the session row follows below
        _json(answers),
        None if result is None else _json(result),
        _json(metadata or {}),
        body_hash,
        now,
        now,
    ]
    with transaction.atomic():
        if proof is not None:
            _session_proof_check(tenant_id, session_id, proof)
        inserted = list(Submission.objects.raw(_SUBMISSION_INSERT, params))
        if not inserted:
            return _submission_replay(tenant_id, submission_id, body_hash), False
        submission = inserted[0]

        session = session_upsert(
            tenant_id=tenant_id,
            session_id=session_id,
            status=Status.COMPLETED,
            email=email,
            first_name=first_name,
            responses=answers,
            proof=proof,  # the token is matched again in the UPDATE itself
            savepoint=False,  # any error ends this transaction
        ).session
        event_publish(
            tenant=tenant_id,
            event_type="assessment.submitted",
            topic="assessments",
            payload=submitted_payload(submission, session),
            idempotency_key=f"assessment.submitted:{submission_id}",
            ordering_key=f"assessment-session:{session_id}",
        )
    return submission, True


def _session_proof_check(tenant_id: TenantId, session_id: uuid.UUID, proof: SessionProof) -> None:
    """The tenant's session (404, like another tenant's) and its token (403)."""
    stored = list(
        tenant_queryset(AssessmentSession, tenant_id=tenant_id)
        .filter(pk=session_id)
        .values_list("token_hash", flat=True)
    )
    if not stored:
        raise DomainError("not_found", "No such object.", kind=ErrorKind.NOT_FOUND)
    proof.check(stored[0])


def _submission_replay(tenant_id: TenantId, submission_id: uuid.UUID, body_hash: str) -> Submission:
    existing = tenant_queryset(Submission, tenant_id=tenant_id).filter(pk=submission_id).first()
    # Another tenant's id, or this id with another payload: both are a reused key (422, like
    # other APIs' idempotency keys).
    if existing is None or existing.request_hash != body_hash:
        raise DomainError(
            "idempotency_key_reused",
            "This submissionId was already used with a different payload; "
            "generate a new submissionId for a new attempt.",
            kind=ErrorKind.UNPROCESSABLE,
            details={"submissionId": str(submission_id)},
        )
    return existing


def submitted_payload(submission: Submission, session: AssessmentSession) -> dict:
    return {
        "submissionId": str(submission.id),
        "sessionId": str(session.id),
        "email": session.email,
        "firstName": session.first_name,
        "answers": submission.answers,
        "result": submission.result,
        "metadata": submission.metadata,
        "submittedAt": submission.created_at.isoformat(),
    }


_EVENTS_INSERT = f"""
INSERT INTO {AnalyticsEvent._meta.db_table}
    (tenant_id, message_id, name, session_id, properties, occurred_at, created_at, updated_at)
SELECT %s, r.m, r.n, r.s, r.p, r.t, now(), now()
FROM jsonb_to_recordset(%s::jsonb) AS r(m text, n text, s uuid, p jsonb, t timestamptz)
ON CONFLICT (tenant_id, message_id) DO NOTHING
"""


def events_store(*, tenant_id: TenantId, events: list[dict]) -> tuple[bool, int]:
    """Insert validated events in ONE statement; returns (stored, newly inserted).

    Best-effort: a failure (timeout, lock, database down) is logged and counted, and the
    caller still answers 200 so browsers do not retry-storm.
    """
    if not events:
        return True, 0
    rows = [
        {
            "m": e["message_id"],
            "n": e["name"],
            "s": e["session_id"],
            "p": e["properties"],
            "t": e["occurred_at"].isoformat(),
        }
        for e in events
    ]
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            # Best-effort data: no fsync wait (a crash may lose the last moments of events,
            # never a submission), and a bounded wait so a web worker is never held long.
            timeout = f"{int(settings.ASSESSMENTS_EVENTS_STATEMENT_TIMEOUT_MS)}ms"
            cursor.execute(
                "SELECT set_config('statement_timeout', %s, true), "
                "set_config('synchronous_commit', 'off', true)",
                [timeout],
            )
            cursor.execute(_EVENTS_INSERT, [tenant_id, _json(rows)])
            return True, cursor.rowcount
    except DatabaseError as exc:
        logger.exception("analytics events not stored (%s events)", len(events))
        metrics.events_store_failure_record(tenant_id=tenant_id, count=len(events), error=exc)
        return False, 0


def sessions_abandon_stale(*, idle_minutes: int | None = None) -> int:
    """Maintenance across tenants: idle started / in-progress sessions become abandoned."""
    minutes = idle_minutes or settings.ASSESSMENTS_ABANDON_AFTER_MINUTES
    cutoff = timezone.now() - timedelta(minutes=minutes)
    return AssessmentSession.objects.filter(
        status__in=[Status.STARTED, Status.IN_PROGRESS], last_activity_at__lt=cutoff
    ).update(status=Status.ABANDONED, abandoned_at=Now(), updated_at=Now())
