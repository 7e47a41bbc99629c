import pytest

from tests.processes import run_django_snippet

pytestmark = pytest.mark.django_db


def test_health_reports_each_dependency(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["checks"]["database"]["ok"] is True
    assert "django_q_cluster" in body["checks"]
    # no cluster runs in the test: degraded, not down
    assert body["checks"]["django_q_cluster"]["ok"] is False
    assert body["status"] == "degraded"


def test_health_is_503_when_the_database_is_unreachable():
    code = (
        "from django.test import Client\n"
        "r = Client().get('/health')\n"
        "print(r.status_code, r.json()['status'], r.json()['checks']['database']['ok'])\n"
    )
    result = run_django_snippet(
        code, DATABASE_URL="postgres://nobody@127.0.0.1:1/none", DB_CONNECT_TIMEOUT="2"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["503", "down", "False"]


def test_openapi_schema_and_docs_are_served(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    spec = schema.json()
    assert spec["openapi"].startswith("3.")
    assert "/api/keys" in spec["paths"]
    assert spec["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger" in docs.content.lower()


def test_admin_login_page_is_served(client):
    response = client.get("/admin/login/")
    assert response.status_code == 200


def test_api_answers_503_with_retry_after_when_the_database_is_unreachable():
    code = (
        "from django.test import Client\n"
        "r = Client(HTTP_AUTHORIZATION='Bearer sk_abcdefgh_' + 'x' * 43).get('/api/keys')\n"
        "print(r.status_code, r.json()['error']['code'], r['Retry-After'])\n"
    )
    result = run_django_snippet(
        code, DATABASE_URL="postgres://nobody@127.0.0.1:1/none", DB_CONNECT_TIMEOUT="2"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-3:] == ["503", "database_unavailable", "5"]
