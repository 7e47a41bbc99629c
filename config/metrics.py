"""GET /metrics in Prometheus text format.

Two kinds of series:
- counted in the web process: API requests by route and status (and their latency). Under
  gunicorn with several workers set PROMETHEUS_MULTIPROC_DIR so every worker's counts are
  merged (prometheus-client's multiprocess mode);
- read from PostgreSQL at scrape time: each app's `<app>/metrics.py` defines
  `collect_metrics() -> iterable of prometheus_client metric families` (outbox backlog, uploads
  retries, payments by status …), so every process reports the same truth.

Access: with METRICS_TOKEN set, `Authorization: Bearer <token>` is required; without it only
clients from METRICS_ALLOWED_NETWORKS (loopback and private ranges by default) are served.
"""

from __future__ import annotations

import hmac
import importlib
import ipaddress
import os
import time

from django.conf import settings
from django.http import HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.registry import Collector

from config.api.errors import error_response

APPS_WITH_METRICS = ("outbox", "uploads", "payments", "assessments")

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
    """Series computed from PostgreSQL rows at scrape time (config/metrics_db.py), then any
    app's own `collect_metrics()`."""

    def collect(self):
        from config import metrics_db

        yield from metrics_db.collect_metrics()
        for app in APPS_WITH_METRICS:
            try:
                module = importlib.import_module(f"{app}.metrics")
            except ModuleNotFoundError as exc:
                if exc.name != f"{app}.metrics":
                    raise
                continue
            collect = getattr(module, "collect_metrics", None)
            if collect is not None:
                yield from collect()


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
