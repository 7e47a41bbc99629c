import pytest
from django.contrib.auth import get_user_model

from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    user = get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True)
    client.force_login(user)
    return client


def test_cache_stats_counts_hits_and_misses(api, staff_client):
    staff_client.post("/api/auth/invalidate-cache")
    for _ in range(4):
        api.get("/api/keys")
    stats = staff_client.get("/api/auth/cache-stats").json()
    assert stats["misses"] == 1 and stats["hits"] == 3
    assert stats["hitRate"] == 0.75
    assert stats["size"] == 1


def test_invalidate_cache_empties_it(api, staff_client):
    api.get("/api/keys")
    response = staff_client.post("/api/auth/invalidate-cache")
    assert response.status_code == 200 and response.json()["invalidated"] >= 1
    assert staff_client.get("/api/auth/cache-stats").json()["size"] == 0


def test_cache_stats_needs_staff(client, api):
    assert_error(client.get("/api/auth/cache-stats"), 401, "authentication_required")
    # a tenant's secret key is not staff
    assert_error(api.get("/api/auth/cache-stats"), 401, "authentication_required")
    user = get_user_model().objects.create_user("plain", password="pw-123456")
    client.force_login(user)
    assert_error(client.get("/api/auth/cache-stats"), 403, "staff_required")
