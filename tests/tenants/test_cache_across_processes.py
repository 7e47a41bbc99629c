"""The verification cache is shared: a hit in one process, a revocation seen by all at once."""

import pytest

from tenants.models import ApiKey
from tenants.services import apikey_revoke
from tests.factories import make_api_key
from tests.processes import run_django_snippet

pytestmark = pytest.mark.django_db(transaction=True)

SNIPPET = """
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
client = Client(HTTP_AUTHORIZATION="Bearer {key}")
with CaptureQueriesContext(connection) as queries:
    response = client.get("/api/keys")
lookups = [q for q in queries.captured_queries if '"key_hash" =' in q["sql"]]
print(response.status_code, len(lookups))
"""


def _request_in_new_process(raw_key: str) -> tuple[int, int]:
    result = run_django_snippet(SNIPPET.format(key=raw_key))
    assert result.returncode == 0, result.stderr
    status, lookups = result.stdout.split()[-2:]
    return int(status), int(lookups)


def test_hit_in_second_process_and_revocation_seen_at_once(tenant):
    raw = make_api_key(tenant, "secret")
    assert _request_in_new_process(raw) == (200, 1)  # miss: one database lookup
    assert _request_in_new_process(raw) == (200, 0)  # another process: served by the cache

    apikey_revoke(key=ApiKey.objects.get(prefix=raw[:11]))

    status, _ = _request_in_new_process(raw)
    assert status == 401
