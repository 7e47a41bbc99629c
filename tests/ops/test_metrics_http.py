import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db


def _samples(response) -> dict:
    text = response.content.decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _api_count(samples, route, method, status) -> float:
    key = (
        "atlas_api_requests_total",
        (("method", method), ("route", route), ("status", status)),
    )
    return samples.get(key, 0.0)


def test_api_requests_are_counted_by_route_and_status(api, client):
    before = _samples(client.get("/metrics"))
    api.get("/api/keys")
    api.get("/api/keys")
    api.post("/api/keys/00000000-0000-0000-0000-000000000000/revoke")
    after = _samples(client.get("/metrics"))
    assert (
        _api_count(after, "/api/keys", "GET", "200") - _api_count(before, "/api/keys", "GET", "200")
        == 2
    )
    route = "/api/keys/<uuid:key_id>/revoke"
    assert _api_count(after, route, "POST", "404") - _api_count(before, route, "POST", "404") == 1


def test_metrics_are_served_to_internal_addresses_only(client):
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert_error(client.get("/metrics", REMOTE_ADDR="203.0.113.5"), 403, "metrics_forbidden")


def test_metrics_token_is_required_when_set(client, settings):
    settings.METRICS_TOKEN = "scrape-me"
    assert_error(client.get("/metrics"), 403, "metrics_forbidden")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me").status_code == 200
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope").status_code == 403
