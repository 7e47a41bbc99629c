"""GET /metrics in Prometheus text format.

Two kinds of series:
- counted in the web process: API requests by route and status (and their latency). Under
  gunicorn with several workers set PROMETHEUS_MULTIPROC_DIR so every worker's counts are
  merged (prometheus-client's multiprocess mode);
- read from PostgreSQL at scrape time: each app's ops module defines `metric_families()`
  (outbox backlog, uploads retries, payments by status …), so every process reports the same
  truth. States are gauges; activity that is pruned from the database (delivery attempts,
  upload retry runs) is reported over the last METRICS_WINDOW_MINUTES as `..._window` series:
  a counter computed from pruned rows would go down at every prune. If the database cannot be
  read the scrape still succeeds with `atlas_metrics_db_up 0`.

Access: with METRICS_TOKEN set, `Authorization: Bearer <token>` is required; without it only
clients from METRICS_ALLOWED_NETWORKS (loopback and private ranges by default) are served.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.registry import Collector

from core.api.errors import error_response
from core.metrics import gauge
from core.ops import atlas_app_configs
from tenants import rls

logger = logging.getLogger(__name__)

API_REQUESTS = Counter(
    "atlas_api_requests_total",
    "API requests by route, method and status",
    ["route", "method", "status"],
)
API_LATENCY = Histogram(
    "atlas_api_request_duration_seconds",
    "API request latency by route",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class DatabaseCollector(Collector):
    """Series computed from PostgreSQL rows at scrape time: each app's contribution."""

    def collect(self):
        try:
            families = [f for config in atlas_app_configs() for f in config.metric_families()]
        except DatabaseError as exc:
            logger.warning("metrics: database unreadable (%s)", exc)
            yield gauge("atlas_metrics_db_up", "1 when the database series could be read", 0)
            return
        yield gauge("atlas_metrics_db_up", "1 when the database series could be read", 1)
        yield from families


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        for collector in (API_REQUESTS, API_LATENCY):
            registry.register(collector)
        _ = REGISTRY
    registry.register(DatabaseCollector())
    return registry


def _allowed(request) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        header = request.headers.get("Authorization", "")
        return hmac.compare_digest(header, f"Bearer {token}")
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net) for net in settings.METRICS_ALLOWED_NETWORKS)


@rls.system_scope("/metrics counts every tenant's rows")
def metrics_view(request):
    if not _allowed(request):
        return error_response(
            "metrics_forbidden", "Metrics need METRICS_TOKEN or an internal address.", 403
        )
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)


class ApiMetricsMiddleware:
    """Counts /api/ requests by route pattern (bounded cardinality, never the raw path)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not request.path.startswith("/api/"):
            return self.get_response(request)
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = f"/{match.route}" if match and match.route else "unmatched"
        API_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        API_LATENCY.labels(route).observe(time.perf_counter() - started)
        return response
