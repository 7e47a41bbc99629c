"""/health semantics: only the database is critical; the rest degrades without a 503."""

from datetime import timedelta

import pytest
from django.db.models import F

from outbox.models import Delivery
from tests.outbox.factories import make_target, publish

pytestmark = pytest.mark.django_db


def test_only_the_database_is_critical(client):
    checks = client.get("/health").json()["checks"]
    assert {name for name, check in checks.items() if check["critical"]} == {"database"}
    assert {"database", "django_q_cluster", "outbox_lag", "outbox_worker"} <= set(checks)


def test_lag_over_the_threshold_degrades_without_a_503(client, tenant, settings):
    settings.OUTBOX_LAG_ALERT_SECONDS = 300
    make_target(tenant, name="hook")
    publish(tenant, n=2, target="hook")
    Delivery.objects.update(created_at=F("created_at") - timedelta(minutes=10))
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["outbox_lag"]["ok"] is False
    assert 600 <= body["checks"]["outbox_lag"]["lagSeconds"] < 700
    assert body["checks"]["outbox_worker"] == {"ok": False, "critical": False, "workers": 0}
