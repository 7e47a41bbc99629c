"""Reusable proof of tenant isolation for any endpoint that takes an id.

    assert_tenant_isolated(other_api, "get", f"/api/things/{thing.id}")

asserts that another tenant's key gets 404 not_found (never 403, so ids do not leak) and,
optionally, that the row is unchanged afterwards.
"""

from __future__ import annotations

from collections.abc import Callable


def assert_error(response, status: int, code: str):
    assert response.status_code == status, (response.status_code, _body(response))
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    return body["error"]


def _body(response):
    try:
        return response.json()
    except Exception:
        return response.content[:500]


def assert_tenant_isolated(
    client,
    method: str,
    url: str,
    data=None,
    *,
    unchanged: Callable[[], object] | None = None,
    fmt: str = "json",
):
    """`client` belongs to another tenant than the object behind `url`."""
    before = unchanged() if unchanged else None
    response = (
        getattr(client, method.lower())(url, data, format=fmt)
        if data is not None
        else (getattr(client, method.lower())(url))
    )
    assert_error(response, 404, "not_found")
    if unchanged:
        assert unchanged() == before, "another tenant's request changed the row"
    return response


def in_this_scope(function: Callable) -> Callable:
    """For a test's own thread: run `function` in the scope of the code starting the thread
    (a new thread starts with no row-level-security scope, so it would see no tenant row)."""
    import contextvars
    import functools

    return functools.partial(contextvars.copy_context().run, function)
