"""The retry safety net: backoff, failed after max attempts, three sources, RetryLog rows,
concurrent runs never processing one attachment twice."""

from __future__ import annotations

import os
import signal
import threading
from datetime import timedelta

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import TestCase
from django.utils import timezone

from outbox.models import OutboxEvent
from tests.tenancy import assert_error, in_this_scope
from tests.uploads.factories import staged_attachment
from uploads import staging, tasks
from uploads.models import Attachment, FinaliseAttempt, RetryLog
from uploads.services import retries


def _sweep():
    with TestCase.captureOnCommitCallbacks(execute=True):
        return tasks.retry_sweep()


@pytest.mark.django_db
def test_scheduled_sweep_stores_due_attachment_once_storage_is_back(tenant, storage_switch):
    attachment = staged_attachment(tenant, b"late bytes", attempts=1, last_error="OSError: down")
    assert _sweep() == {"attempted": 1, "succeeded": 1, "failed": 0}

    attachment.refresh_from_db()
    assert attachment.status == "stored" and attachment.attempts == 2
    assert attachment.last_error == "" and attachment.last_retry_source == "scheduled"
    assert [p.read_bytes() for p in storage_switch.files()] == [b"late bytes"]
    path = staging.staging_path(tenant_id=tenant.pk, attachment_id=attachment.pk)
    assert not path.exists()
    log = RetryLog.objects.get()
    assert (log.source, log.tenant_id, log.attempted, log.succeeded, log.failed) == (
        "scheduled",
        None,
        1,
        1,
        0,
    )
    assert log.finished_at is not None
    assert FinaliseAttempt.objects.get().retry_log == log
    assert OutboxEvent.objects.filter(event_type="upload.stored").count() == 1


@pytest.mark.django_db
def test_schedule_leaves_attachments_whose_backoff_is_not_due(tenant):
    staged_attachment(tenant, next_retry_at=timezone.now() + timedelta(minutes=5))
    assert _sweep() == {"attempted": 0, "succeeded": 0, "failed": 0}
    assert Attachment.objects.get().status == "pending"
    assert RetryLog.objects.get().attempted == 0  # an empty run is still logged


@pytest.mark.django_db
def test_backoff_doubles_then_failed_after_max_attempts(tenant, settings, storage_switch):
    settings.UPLOADS_MAX_ATTEMPTS = 3
    settings.UPLOADS_RETRY_BACKOFF_BASE_SECONDS = 60
    storage_switch.fail("storage unreachable")
    attachment = staged_attachment(tenant, b"unlucky")
    delays = []
    for _ in range(3):
        with time_machine.travel(attachment.next_retry_at + timedelta(seconds=1), tick=False):
            assert _sweep()["failed"] == 1
        attachment.refresh_from_db()
        if attachment.next_retry_at:
            delays.append((attachment.next_retry_at - attachment.last_attempt_at).total_seconds())
    assert delays == [60, 120]
    assert attachment.status == "failed" and attachment.attempts == 3
    assert attachment.next_retry_at is None
    assert "storage unreachable" in attachment.last_error
    assert FinaliseAttempt.objects.filter(succeeded=False).count() == 3
    assert staging.staging_path(tenant_id=tenant.pk, attachment_id=attachment.pk).exists()
    assert OutboxEvent.objects.count() == 0
    with time_machine.travel(timezone.now() + timedelta(days=1)):
        assert _sweep()["attempted"] == 0  # failed is final for the schedule


@pytest.mark.django_db
def test_client_sync_retries_only_the_callers_pending_uploads(api, tenant, other_tenant):
    later = timezone.now() + timedelta(hours=1)
    mine = staged_attachment(tenant, b"mine", next_retry_at=later)
    theirs = staged_attachment(other_tenant, b"theirs", next_retry_at=later)
    with TestCase.captureOnCommitCallbacks(execute=True):
        response = api.post("/api/uploads/retry")
    assert response.status_code == 200
    body = response.json()
    assert (body["source"], body["attempted"], body["succeeded"], body["failed"]) == (
        "client-sync",
        1,
        1,
        0,
    )
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.status == "stored" and theirs.status == "pending"
    log = RetryLog.objects.get()
    assert str(log.pk) == body["runId"] and log.tenant_id == tenant.pk


@pytest.mark.django_db
def test_client_sync_skips_an_upload_attempted_a_moment_ago(browser_api, tenant, storage_switch):
    storage_switch.fail()
    staged_attachment(tenant, last_attempt_at=timezone.now() - timedelta(seconds=5))
    body = browser_api.post("/api/uploads/retry").json()
    assert body["attempted"] == 0
    assert FinaliseAttempt.objects.count() == 0


@pytest.mark.django_db
def test_client_sync_needs_a_key(anon_api):
    assert_error(anon_api.post("/api/uploads/retry"), 401, "authentication_required")
    assert RetryLog.objects.count() == 0


@pytest.mark.django_db
def test_uploads_retry_command_shows_progress_and_summary(tenant, capsys):
    for index in range(3):
        staged_attachment(tenant, f"file {index}".encode())
    with TestCase.captureOnCommitCallbacks(execute=True):
        call_command("uploads_retry", "--tenant", "Acme")
    out = capsys.readouterr().out
    assert "[1/3] stored" in out and "[3/3] stored" in out
    assert "attempted 3, succeeded 3, failed 0" in out
    log = RetryLog.objects.get()
    assert (log.source, log.tenant_id, log.succeeded) == ("manual", tenant.pk, 3)


@pytest.mark.django_db
def test_uploads_retry_command_fails_loudly_when_storage_is_down(tenant, storage_switch):
    storage_switch.fail()
    staged_attachment(tenant)
    with pytest.raises(CommandError, match="could not be stored"):
        call_command("uploads_retry")
    assert RetryLog.objects.get().failed == 1
    with pytest.raises(CommandError, match="No tenant"):
        call_command("uploads_retry", "--tenant", "Nobody")


@pytest.mark.django_db
def test_uploads_retry_command_stops_after_the_current_attachment_on_sigterm(tenant, monkeypatch):
    for index in range(3):
        staged_attachment(tenant, f"file {index}".encode())
    finalise = retries.attachment_finalise

    def finalise_then_sigterm(**kwargs):
        outcome = finalise(**kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # the operator stops the command mid-run
        return outcome

    monkeypatch.setattr(retries, "attachment_finalise", finalise_then_sigterm)
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(CommandError, match="stopped by SIGTERM; the run's log was written"):
        call_command("uploads_retry")
    log = RetryLog.objects.get()
    assert (log.attempted, log.succeeded) == (1, 1) and log.finished_at is not None
    assert Attachment.objects.filter(status="pending").count() == 2
    assert signal.getsignal(signal.SIGTERM) == handler_before


@pytest.mark.django_db
def test_manual_retry_gives_a_failed_attachment_another_chance(tenant, settings):
    settings.UPLOADS_MAX_ATTEMPTS = 2
    attachment = staged_attachment(tenant, status="failed", attempts=2, next_retry_at=None)
    with TestCase.captureOnCommitCallbacks(execute=True):
        log = retries.retry_run(source="manual", attachment_ids=[attachment.pk])
    attachment.refresh_from_db()
    assert attachment.status == "stored" and attachment.attempts == 3
    assert (log.attempted, log.succeeded) == (1, 1)


@pytest.mark.django_db
def test_unknown_retry_source_is_refused(tenant):
    with pytest.raises(Exception, match="Unknown retry source"):
        retries.retry_run(source="cron")
    assert RetryLog.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_runs_never_process_one_attachment_twice(tenant, settings, storage_switch):
    settings.UPLOADS_RETRY_BATCH_SIZE = 5
    storage_switch.slow(0.05)  # each store takes a while, so the runs overlap
    attachments = [staged_attachment(tenant, f"file {i}".encode()) for i in range(12)]
    barrier = threading.Barrier(2)
    logs, errors = [], []

    def run(source):
        try:
            barrier.wait()
            logs.append(retries.retry_run(source=source))
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=in_this_scope(run), args=(s,)) for s in ("scheduled", "manual")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(log.attempted for log in logs) == [5, 5]
    per_attachment = {}
    for attempt in FinaliseAttempt.objects.all():
        per_attachment.setdefault(attempt.attachment_id, []).append(attempt.retry_log_id)
    assert len(per_attachment) == 10
    assert all(len(runs) == 1 for runs in per_attachment.values())  # never twice
    # the two runs processed disjoint sets, each its own
    assert {runs[0] for runs in per_attachment.values()} == {log.pk for log in logs}
    assert Attachment.objects.filter(status="stored").count() == 10
    assert OutboxEvent.objects.filter(event_type="upload.stored").count() == 10
    assert len(attachments) - 10 == Attachment.objects.filter(status="pending").count()


@pytest.mark.django_db
def test_a_claim_from_a_crashed_run_is_taken_over_after_the_lease(tenant, settings):
    settings.UPLOADS_RETRY_LEASE_SECONDS = 300
    staged_attachment(tenant, claimed_until=timezone.now() + timedelta(seconds=300))
    assert _sweep()["attempted"] == 0
    with time_machine.travel(timezone.now() + timedelta(seconds=301)):
        assert _sweep()["succeeded"] == 1


@pytest.mark.django_db
def test_odd_filename_is_stored_under_a_safe_name(tenant, storage_switch):
    attachment = staged_attachment(tenant, b"odd", filename="..")
    assert _sweep()["succeeded"] == 1
    attachment.refresh_from_db()
    assert attachment.storage_name.endswith(f"/{attachment.pk}_file")
    assert attachment.filename == ".."


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_uploads_retry_processes_share_the_work_without_overlap(tenant, settings,
                                                                    storage_switch):  # fmt: skip
    from tests.processes import manage_popen

    storage_switch.slow(0.2)
    for index in range(8):
        staged_attachment(tenant, f"process file {index}".encode())
    env = {
        "UPLOADS_STAGING_DIR": str(settings.UPLOADS_STAGING_DIR),
        "UPLOADS_STORAGE_DIR": str(settings.UPLOADS_STORAGE_DIR),
        "UPLOADS_STORAGE_BACKEND": "tests.uploads.storage.FlakyStorage",
        "UPLOADS_RETRY_BATCH_SIZE": "4",
    }
    workers = [manage_popen("uploads_retry", **env) for _ in range(2)]
    outputs = [worker.communicate(timeout=120)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    logs = list(RetryLog.objects.all())
    assert sorted((log.source, log.attempted, log.succeeded) for log in logs) == [
        ("manual", 4, 4),
        ("manual", 4, 4),
    ]
    assert FinaliseAttempt.objects.count() == 8  # each attachment exactly once
    assert set(FinaliseAttempt.objects.values_list("attachment_id", flat=True)) == set(
        Attachment.objects.values_list("pk", flat=True)
    )
    assert Attachment.objects.filter(status="stored").count() == 8
    assert len(storage_switch.files()) == 8
