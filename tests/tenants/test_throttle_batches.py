"""Key budgets are counted in batches: a burst of requests with one key writes the shared
cache once per batch, not once per request, and the budget still ends where it ends."""

from __future__ import annotations

import uuid

import pytest
from django.core.cache import caches

from tenants.throttles import granted

pytestmark = pytest.mark.django_db


@pytest.fixture
def throttle_writes(monkeypatch):
    """Every write of a throttle history into the real (file) cache."""
    backend = caches["default"]
    original = backend.set
    keys: list[str] = []

    def counting_set(key, *args, **kwargs):
        if str(key).startswith("throttle_"):
            keys.append(key)
        return original(key, *args, **kwargs)

    monkeypatch.setattr(backend, "set", counting_set)
    return keys


def _rate(settings, api_key: str):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
                                   "api_key": api_key},
    }  # fmt: skip


def _head(api):
    # any keyed request counts; an unknown upload keeps it cheap (404 after the throttle)
    return api.head(f"/api/uploads/tus/{uuid.uuid4()}", HTTP_TUS_RESUMABLE="1.0.0")


def test_a_burst_with_one_key_writes_the_cache_once_per_batch(api, settings, throttle_writes):
    # Before: DRF's throttle wrote the history on every request (120 writes here).
    _rate(settings, "20000/min")  # batches of 50
    statuses = {_head(api).status_code for _ in range(120)}
    assert statuses == {404}
    assert len(throttle_writes) == 3


def test_a_batched_budget_still_ends_at_its_count(api, settings):
    _rate(settings, "300/min")  # batches of 3
    statuses = [_head(api).status_code for _ in range(301)]
    assert statuses[:300] == [404] * 300
    refused = _head(api)
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0


def test_a_batch_taken_by_another_process_counts_in_the_shared_budget(api, settings):
    _rate(settings, "300/min")
    assert _head(api).status_code == 404  # this process took a batch of 3
    granted.clear()  # another process: none of those 3 are its own to spend
    statuses = [_head(api).status_code for _ in range(298)]
    assert statuses[:297] == [404] * 297 and statuses[297] == 429


def test_small_budgets_stay_exact(api, settings, throttle_writes):
    _rate(settings, "5/min")
    assert [_head(api).status_code for _ in range(6)] == [404] * 5 + [429]
    assert len(throttle_writes) == 5
