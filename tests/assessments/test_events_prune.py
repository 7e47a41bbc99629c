"""Analytics events retention: old rows go in batches, recent ones stay."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.utils import timezone

from assessments.models import AnalyticsEvent
from assessments.retention import analytics_events_prune
from tests.assessments.factories import EventFactory

pytestmark = pytest.mark.django_db


def test_events_older_than_the_window_go_in_batches(tenant):
    with time_machine.travel(timezone.now() - timedelta(days=100), tick=False):
        EventFactory.create_batch(7, tenant=tenant)
    recent = EventFactory.create_batch(3, tenant=tenant)
    batches = []
    assert analytics_events_prune(older_than_days=90, batch_size=2, progress=batches.append) == 7
    assert len(batches) >= 4  # never one big delete
    assert set(AnalyticsEvent.objects.values_list("id", flat=True)) == {e.id for e in recent}


def test_command_uses_the_setting_and_prints_progress(tenant, settings):
    settings.ASSESSMENTS_EVENTS_RETENTION_DAYS = 30
    with time_machine.travel(timezone.now() - timedelta(days=40), tick=False):
        EventFactory.create_batch(4, tenant=tenant)
    EventFactory(tenant=tenant)
    out = StringIO()
    call_command("assessments_events_prune", "--batch-size", "3", stdout=out)
    assert "pruned 4 analytics events older than 30 days" in out.getvalue()
    assert "pruned 3 analytics events…" in out.getvalue()  # progress after the first batch
    assert AnalyticsEvent.objects.count() == 1
