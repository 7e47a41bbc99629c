"""Atlas settings: one file, every knob from the environment (documented in .env.example).

A malformed value stops start-up with ImproperlyConfigured naming the variable.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from datetime import timedelta
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("ATLAS_VAR_DIR") or BASE_DIR / "var")

_env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def env(name: str, cast: str = "str", default=None):
    """Read one variable; a value that does not parse names the variable in the error."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        if cast == "str":
            return raw
        if cast == "int":
            return int(raw)
        if cast == "float":
            return float(raw)
        if cast == "bool":
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError("expected one of 1/0, true/false, yes/no, on/off")
        if cast == "list":
            return [item.strip() for item in raw.split(",") if item.strip()]
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a valid {cast}: {exc}") from exc
    raise ImproperlyConfigured(f"unknown cast {cast!r} for {name}")


def _database_from_url(name: str, url: str) -> dict:
    try:
        config = _env.db_url_config(url)
    except Exception as exc:  # environ raises several types for a bad URL
        raise ImproperlyConfigured(f"{name} is not a valid database URL: {exc}") from exc
    if config.get("ENGINE") != "django.db.backends.postgresql":
        raise ImproperlyConfigured(
            f"{name} must point at PostgreSQL (postgres://…); Atlas relies on PostgreSQL features"
        )
    return config


DEBUG = env("DEBUG", "bool", False)
SECRET_KEY = env("SECRET_KEY")
if not SECRET_KEY:
    # A stable per-checkout key for the embedded default, so `make run` needs no set-up.
    _key_file = VAR_DIR / "secret_key"
    if not _key_file.exists():
        import secrets

        VAR_DIR.mkdir(parents=True, exist_ok=True)
        _key_file.write_text(secrets.token_urlsafe(50))
    SECRET_KEY = _key_file.read_text().strip()

ALLOWED_HOSTS = env("ALLOWED_HOSTS", "list", ["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env("CSRF_TRUSTED_ORIGINS", "list", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc as local static files: docs work offline
    "django_q",
    "axes",  # staff login throttle (see "Staff login" below)
    "tenants",
    "assessments",
    "outbox",
    "uploads",
    "payments",
    "ops",
]

MIDDLEWARE = [
    # first: each request starts with no RLS scope and leaves none behind (tenants/rls.py)
    "tenants.rls.ScopeMiddleware",
    "core.middleware.RequestIdMiddleware",
    "ops.metrics.ApiMetricsMiddleware",
    "tenants.cors.CorsMiddleware",  # corsheaders, with origins loaded off the event loop
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: answers a locked-out login with 429
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database: DATABASE_URL, or the embedded PostgreSQL under var/ -------------------------
DATABASE_URL = env("DATABASE_URL")
if DATABASE_URL:
    _db = _database_from_url("DATABASE_URL", DATABASE_URL)
else:
    from config.embedded_db import embedded_database_url

    _db = _database_from_url("DATABASE_URL", embedded_database_url(VAR_DIR / "pgdata"))
# Persistent connections: the worker and the django-q2 cluster otherwise pay a connect per task.
# The embedded server's URI names its Unix socket folder as ?host=; Django wants it in HOST.
if not _db.get("HOST") and _db.get("OPTIONS", {}).get("host"):
    _db["HOST"] = _db["OPTIONS"].pop("host")
# Django's PostgreSQL backend plus the row-level-security scope (tenants/rls.py, docs/tenancy.md)
_db["ENGINE"] = "tenants.db"
_db["CONN_MAX_AGE"] = env("DB_CONN_MAX_AGE", "int", 60)
_db["CONN_HEALTH_CHECKS"] = True
_db.setdefault("OPTIONS", {})
_db["OPTIONS"].setdefault("connect_timeout", env("DB_CONNECT_TIMEOUT", "int", 5))
_db["TEST"] = {"NAME": env("TEST_DATABASE_NAME")} if env("TEST_DATABASE_NAME") else {}
DATABASES = {"default": _db}
# The role application code runs as (SET ROLE after connecting): neither superuser, nor table
# owner, nor BYPASSRLS, so PostgreSQL's row-level security applies to it; system work runs as
# "<role>_system". Both are created by `migrate` when missing; migrate and flush run as the
# login role (the owner).
DATABASE_APP_ROLE = env("DATABASE_APP_ROLE", default="atlas_app")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache: shared by every process (API-key cache, throttles, circuit hints, django-q2) -----
# Without REDIS_URL a file-based cache under var/ is shared by every process on this host;
# a deployment with more than one host sets REDIS_URL so revocations reach every host at once.
REDIS_URL = env("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": env("CACHE_DIR") or str(VAR_DIR / "cache"),
            "OPTIONS": {"MAX_ENTRIES": 20000},
        }
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"

STORAGES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Bodies larger than this are refused with 413 payload_too_large (uploads have their own limit).
DATA_UPLOAD_MAX_MEMORY_SIZE = env("API_MAX_BODY_BYTES", "int", 1024 * 1024)

# --- API ------------------------------------------------------------------------------------
API_KEY_CACHE_TTL_SECONDS = env("API_KEY_CACHE_TTL_SECONDS", "int", 60)
API_KEY_CACHE_ENABLED = env("API_KEY_CACHE_ENABLED", "bool", True)
# last_used_at is written at most this often per key, so a burst of requests costs no writes.
API_KEY_LAST_USED_RESOLUTION_SECONDS = env("API_KEY_LAST_USED_RESOLUTION_SECONDS", "int", 60)
THROTTLE_KEY_RATE = env("THROTTLE_KEY_RATE", default="20000/min")
THROTTLE_ANON_RATE = env("THROTTLE_ANON_RATE", default="120/min")
THROTTLE_ENABLED = env("THROTTLE_ENABLED", "bool", True)
# --- Publishable keys: visitor throttles and the client IP (see tenants/throttles.py) --------
# The pk_ key is shared by every visitor: budgets are per (key, client IP), submits apart.
THROTTLE_PUBLISHABLE_RATE = env("THROTTLE_PUBLISHABLE_RATE", default="1200/min")
THROTTLE_PUBLISHABLE_SUBMIT_RATE = env("THROTTLE_PUBLISHABLE_SUBMIT_RATE", default="60/min")
for _name, _rate in (
    ("THROTTLE_KEY_RATE", THROTTLE_KEY_RATE),
    ("THROTTLE_ANON_RATE", THROTTLE_ANON_RATE),
    ("THROTTLE_PUBLISHABLE_RATE", THROTTLE_PUBLISHABLE_RATE),
    ("THROTTLE_PUBLISHABLE_SUBMIT_RATE", THROTTLE_PUBLISHABLE_SUBMIT_RATE),
):
    _count, _, _period = _rate.partition("/")
    if not (_count.isdigit() and int(_count) > 0 and _period[:1] in {"s", "m", "h", "d"}):
        raise ImproperlyConfigured(f"{_name}={_rate!r} must look like 120/min (s, min, h, day)")
# Proxies in front of the app that append to X-Forwarded-For; 0: the client is REMOTE_ADDR.
TRUSTED_PROXY_COUNT = env("TRUSTED_PROXY_COUNT", "int", 0)
if TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured(f"TRUSTED_PROXY_COUNT={TRUSTED_PROXY_COUNT} must be 0 or more")

# --- Staff login: failed logins throttled per account and per IP (django-axes) -------------
# ADMIN_LOGIN_FAILURE_LIMIT failures for one username, or from one client IP, lock further
# logins (even with the right password: 429) for ADMIN_LOGIN_COOLOFF_MINUTES. The client IP
# is the one the API's throttles use (core.clientip: REMOTE_ADDR unless TRUSTED_PROXY_COUNT).
# Unlock sooner: `manage.py axes_reset_username <name>` / `axes_reset_ip <ip>`.
ADMIN_LOGIN_FAILURE_LIMIT = env("ADMIN_LOGIN_FAILURE_LIMIT", "int", 5)
ADMIN_LOGIN_COOLOFF_MINUTES = env("ADMIN_LOGIN_COOLOFF_MINUTES", "int", 15)
for _name in ("ADMIN_LOGIN_FAILURE_LIMIT", "ADMIN_LOGIN_COOLOFF_MINUTES"):
    if globals()[_name] < 1:
        raise ImproperlyConfigured(f"{_name}={globals()[_name]} must be at least 1")
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out login up front
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = ADMIN_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=ADMIN_LOGIN_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # each alone: per account, per IP
AXES_CLIENT_IP_CALLABLE = "core.clientip.client_ip"
AXES_RESET_ON_SUCCESS = False  # one valid login must not wipe an IP's failed guesses
AXES_HTTP_RESPONSE_CODE = 429

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.permissions.HasSecretKey"],
    "DEFAULT_THROTTLE_CLASSES": [
        "tenants.throttles.ApiKeyRateThrottle",
        "tenants.throttles.AnonymousIpRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "api_key": THROTTLE_KEY_RATE,
        "anon_ip": THROTTLE_ANON_RATE,
        "publishable": THROTTLE_PUBLISHABLE_RATE,
        "publishable_submit": THROTTLE_PUBLISHABLE_SUBMIT_RATE,
    },
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["core.api.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "core.api.pagination.CursorPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "core.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Atlas API",
    "DESCRIPTION": (
        "Assessment sessions, submissions, analytics events, the event outbox, uploads and "
        "payments. Authenticate with `Authorization: Bearer <key>`: publishable keys (`pk_…`) "
        "for browsers, secret keys (`sk_…`) for servers. Every error has the shape "
        '`{"error": {"code", "message", "details"}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # the UI's JavaScript and CSS from our static files, never a CDN
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "REDOC_UI_SETTINGS": {
        "theme": {"typography": {"fontFamily": "system-ui, sans-serif"}},  # no web fonts
    },
    "COMPONENT_SPLIT_REQUEST": True,
    "CAMELIZE_NAMES": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.api.schema.add_error_responses",
    ],
}

# CORS: a publishable key lists the origins allowed to use it (see tenants.cors); preflight
# succeeds for an origin that some active publishable key allows.
CORS_URLS_REGEX = r"^/api/.*$"
CORS_ALLOW_HEADERS = [
    "authorization",
    "content-type",
    "idempotency-key",
    "tus-resumable",
    "upload-length",
    "upload-offset",
    "upload-metadata",
    "upload-checksum",
    "upload-defer-length",
    "upload-concat",
    "x-http-method-override",
    "x-requested-with",
    "last-event-id",
    "x-session-token",  # a browser's proof for its assessment session (core.session_proof)
]
CORS_EXPOSE_HEADERS = [
    "idempotent-replayed",
    "retry-after",
    "location",
    "upload-offset",
    "upload-length",
    "upload-expires",
    "tus-resumable",
    "tus-version",
    "tus-extension",
    "tus-max-size",
    "tus-checksum-algorithm",
]

# --- django-q2: schedules and sweeps; the ORM broker (PostgreSQL) on one host ----------------
# Q_BROKER: "orm" (default without REDIS_URL) or "redis" (default with it: every host's cluster
# takes tasks from one Redis list). Schedules live in PostgreSQL either way, and the scheduler
# claims a due schedule under a row lock, so one run per interval across every cluster.
Q_BROKER = env("Q_BROKER", default="redis" if REDIS_URL else "orm")
if Q_BROKER not in {"orm", "redis"}:
    raise ImproperlyConfigured(f"Q_BROKER={Q_BROKER!r} must be 'orm' or 'redis'")
if Q_BROKER == "redis" and not REDIS_URL:
    raise ImproperlyConfigured("Q_BROKER=redis needs REDIS_URL")
Q_CLUSTER: dict[str, Any] = {
    "name": env("Q_CLUSTER_NAME", default="atlas"),
    "workers": env("Q_WORKERS", "int", 2),
    "timeout": env("Q_TIMEOUT_SECONDS", "int", 120),
    # retry must exceed timeout; max_attempts stops the ORM broker handing a task out forever.
    "retry": env("Q_RETRY_SECONDS", "int", 300),
    "max_attempts": 3,
    "save_limit": 500,
    "catch_up": False,
    "poll": 1,
    "label": "Django Q2",
}
if Q_BROKER == "redis":
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# --- Outbox (issue 4 uses these) -------------------------------------------------------------
OUTBOX_BACKOFF_BASE_SECONDS = env("OUTBOX_BACKOFF_BASE_SECONDS", "int", 60)
OUTBOX_BACKOFF_MAX_SECONDS = env("OUTBOX_BACKOFF_MAX_SECONDS", "int", 6 * 3600)
OUTBOX_MAX_ATTEMPTS = env("OUTBOX_MAX_ATTEMPTS", "int", 8)
OUTBOX_LEASE_SECONDS = env("OUTBOX_LEASE_SECONDS", "int", 60)
OUTBOX_BATCH_SIZE = env("OUTBOX_BATCH_SIZE", "int", 100)
OUTBOX_MAX_PAYLOAD_BYTES = env("OUTBOX_MAX_PAYLOAD_BYTES", "int", 256 * 1024)
OUTBOX_LAG_ALERT_SECONDS = env("OUTBOX_LAG_ALERT_SECONDS", "int", 300)
N8N_WEBHOOK_URL = env("N8N_WEBHOOK_URL")
N8N_WEBHOOK_SECRET = env("N8N_WEBHOOK_SECRET")
SLACK_WEBHOOK_URL = env("SLACK_WEBHOOK_URL")
# Worker: parallel HTTP sends per worker, and the poll interval when no NOTIFY arrives.
OUTBOX_WORKER_CONCURRENCY = env("OUTBOX_WORKER_CONCURRENCY", "int", 32)
OUTBOX_POLL_SECONDS = env("OUTBOX_POLL_SECONDS", "float", 2.0)
# Fair sharing (outbox/delivery/claim.py): live leases one target may hold across every
# worker; a dead or slow target holds at most this many send slots.
OUTBOX_TARGET_MAX_IN_FLIGHT = env("OUTBOX_TARGET_MAX_IN_FLIGHT", "int", 4)
# Circuit breaker per target (state in PostgreSQL, shared by every worker).
OUTBOX_CIRCUIT_FAILURES = env("OUTBOX_CIRCUIT_FAILURES", "int", 5)
OUTBOX_CIRCUIT_OPEN_SECONDS = env("OUTBOX_CIRCUIT_OPEN_SECONDS", "int", 60)
OUTBOX_CIRCUIT_CLOSE_SUCCESSES = env("OUTBOX_CIRCUIT_CLOSE_SUCCESSES", "int", 3)
OUTBOX_SECRET_ROTATION_HOURS = env("OUTBOX_SECRET_ROTATION_HOURS", "int", 24)
OUTBOX_SLACK_RATE_PER_SECOND = env("OUTBOX_SLACK_RATE_PER_SECOND", "float", 1.0)
# The django-q2 sweep's time budget per run (must stay below Q_TIMEOUT_SECONDS).
OUTBOX_SWEEP_SECONDS = env("OUTBOX_SWEEP_SECONDS", "int", 40)
# Retention (outbox_prune, daily; docs/history.md): delivered events (with their deliveries
# and attempts) after N days; the attempts of delivered deliveries earlier; the per-minute
# counters behind the dashboard and /metrics after N hours (at least 25: the dashboard shows
# 24 h). Open, dead and cancelled deliveries and their events are never pruned.
OUTBOX_PRUNE_DAYS = env("OUTBOX_PRUNE_DAYS", "int", 30)
OUTBOX_ATTEMPT_RETENTION_DAYS = env("OUTBOX_ATTEMPT_RETENTION_DAYS", "int", 14)
OUTBOX_STATS_RETENTION_HOURS = env("OUTBOX_STATS_RETENTION_HOURS", "int", 48)
if OUTBOX_STATS_RETENTION_HOURS < 25:
    raise ImproperlyConfigured("OUTBOX_STATS_RETENTION_HOURS must be at least 25 (24 h shown)")
OUTBOX_HEARTBEAT_STALE_SECONDS = env("OUTBOX_HEARTBEAT_STALE_SECONDS", "int", 60)
# Realtime (SSE): the safety valve for a seq hole whose transactions are still running (holes
# settle when those end; see outbox/realtime/hub.py), the keep-alive comment interval, and the
# port of the ASGI server `make run` starts for streams.
OUTBOX_REALTIME_SETTLE_SECONDS = env("OUTBOX_REALTIME_SETTLE_SECONDS", "float", 30.0)
OUTBOX_REALTIME_KEEPALIVE_SECONDS = env("OUTBOX_REALTIME_KEEPALIVE_SECONDS", "float", 15.0)
OUTBOX_REALTIME_PORT = env("OUTBOX_REALTIME_PORT", "int", 8001)
# Realtime tokens for browsers (POST /api/realtime/tokens): lifetime bounds in seconds.
OUTBOX_REALTIME_TOKEN_DEFAULT_TTL_SECONDS = env(
    "OUTBOX_REALTIME_TOKEN_DEFAULT_TTL_SECONDS", "int", 900
)
OUTBOX_REALTIME_TOKEN_MIN_TTL_SECONDS = env("OUTBOX_REALTIME_TOKEN_MIN_TTL_SECONDS", "int", 10)
OUTBOX_REALTIME_TOKEN_MAX_TTL_SECONDS = env("OUTBOX_REALTIME_TOKEN_MAX_TTL_SECONDS", "int", 3600)
# Egress guard (outbox/delivery/egress.py): targets reach public addresses only. These CIDRs
# are exempt (local development, an n8n on the private network: keep them narrow); metadata
# addresses stay refused even inside them. And the most targets one tenant may have.
OUTBOX_ALLOWED_TARGET_NETWORKS = env("OUTBOX_ALLOWED_TARGET_NETWORKS", "list", [])
OUTBOX_MAX_TARGETS_PER_TENANT = env("OUTBOX_MAX_TARGETS_PER_TENANT", "int", 20)
# Every send through this HTTP CONNECT proxy (`http://[user:password@]host:port`), e.g. a
# smokescreen in front of the workers: the tunnel goes to the address the guard checked.
OUTBOX_EGRESS_PROXY = env("OUTBOX_EGRESS_PROXY", "str", "")
if OUTBOX_EGRESS_PROXY and not OUTBOX_EGRESS_PROXY.startswith("http://"):
    raise ImproperlyConfigured("OUTBOX_EGRESS_PROXY must be http://[user:password@]host:port")
try:
    import ipaddress as _ipaddress

    for _net in OUTBOX_ALLOWED_TARGET_NETWORKS:
        _ipaddress.ip_network(_net, strict=True)
except ValueError as _exc:
    raise ImproperlyConfigured(f"OUTBOX_ALLOWED_TARGET_NETWORKS: {_exc}") from _exc
for _name in (
    "OUTBOX_BACKOFF_BASE_SECONDS",
    "OUTBOX_MAX_ATTEMPTS",
    "OUTBOX_LEASE_SECONDS",
    "OUTBOX_BATCH_SIZE",
    "OUTBOX_WORKER_CONCURRENCY",
    "OUTBOX_TARGET_MAX_IN_FLIGHT",
    "OUTBOX_CIRCUIT_FAILURES",
    "OUTBOX_CIRCUIT_CLOSE_SUCCESSES",
    "OUTBOX_MAX_TARGETS_PER_TENANT",
):
    if globals()[_name] < 1:
        raise ImproperlyConfigured(f"{_name} must be at least 1")
if Q_CLUSTER["timeout"] <= OUTBOX_SWEEP_SECONDS:
    raise ImproperlyConfigured("OUTBOX_SWEEP_SECONDS must be below Q_TIMEOUT_SECONDS")

# --- Payments (issue 5) -------------------------------------------------------------------------
STRIPE_SECRET_KEY = env("STRIPE_SECRET_KEY", default="")
STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET", "list", [])
STRIPE_API_BASE = env("STRIPE_API_BASE", default="https://api.stripe.com")
STRIPE_TIMEOUT_SECONDS = env("STRIPE_TIMEOUT_SECONDS", "float", 10.0)
# Webhook signatures older than this are refused (Stripe's SDK default is 300 s).
STRIPE_WEBHOOK_TOLERANCE_SECONDS = env("STRIPE_WEBHOOK_TOLERANCE_SECONDS", "int", 300)
# Retries by the SDK itself (same Idempotency-Key) on connection errors, 409 and 5xx.
STRIPE_MAX_NETWORK_RETRIES = env("STRIPE_MAX_NETWORK_RETRIES", "int", 1)
# Circuit breaker (state shared in PostgreSQL): open after N consecutive failures, for S seconds.
STRIPE_CIRCUIT_FAILURE_THRESHOLD = env("STRIPE_CIRCUIT_FAILURE_THRESHOLD", "int", 5)
STRIPE_CIRCUIT_COOLDOWN_SECONDS = env("STRIPE_CIRCUIT_COOLDOWN_SECONDS", "int", 30)
STRIPE_DASHBOARD_URL = env("STRIPE_DASHBOARD_URL", default="https://dashboard.stripe.com")
# payments_reconcile: pending sessions older than this are re-read from Stripe.
PAYMENTS_RECONCILE_OLDER_THAN_MINUTES = env("PAYMENTS_RECONCILE_OLDER_THAN_MINUTES", "int", 30)
PAYMENTS_RECONCILE_BATCH_SIZE = env("PAYMENTS_RECONCILE_BATCH_SIZE", "int", 200)
for _name in (
    "STRIPE_TIMEOUT_SECONDS",
    "STRIPE_WEBHOOK_TOLERANCE_SECONDS",
    "STRIPE_CIRCUIT_FAILURE_THRESHOLD",
    "STRIPE_CIRCUIT_COOLDOWN_SECONDS",
    "PAYMENTS_RECONCILE_OLDER_THAN_MINUTES",
    "PAYMENTS_RECONCILE_BATCH_SIZE",
):
    if globals()[_name] <= 0:
        raise ImproperlyConfigured(f"{_name} must be greater than 0")
if STRIPE_MAX_NETWORK_RETRIES < 0:
    raise ImproperlyConfigured("STRIPE_MAX_NETWORK_RETRIES must be 0 or more")

# --- Uploads (issue 6) --------------------------------------------------------------------------
UPLOADS_MAX_BYTES = env("UPLOADS_MAX_BYTES", "int", 100 * 1024 * 1024)
UPLOADS_ALLOWED_CONTENT_TYPES = env("UPLOADS_ALLOWED_CONTENT_TYPES", "list", [])
UPLOADS_STAGING_DIR = Path(env("UPLOADS_STAGING_DIR") or VAR_DIR / "staging")
UPLOADS_STORAGE_DIR = Path(env("UPLOADS_STORAGE_DIR") or VAR_DIR / "attachments")
# Staging: a storage with local paths (tus appends in place and fsyncs before it acknowledges):
# the default folder UPLOADS_STAGING_DIR, or a folder every web host mounts (NFS, EFS, …).
STORAGES["staging"] = {
    "BACKEND": env("UPLOADS_STAGING_BACKEND", default="uploads.staging.StagingStorage"),
    "OPTIONS": {"location": env("UPLOADS_STAGING_LOCATION")}
    if env("UPLOADS_STAGING_LOCATION")
    else {},
}
# True when every host sees the same staging folder. False: each attachment records the host
# that staged it (ATLAS_HOST_NAME) and only that host's retry runs finalise it — another host
# never judges bytes it cannot see. Default: true on one host (no REDIS_URL: every process
# sees the one folder, and a changed host name strands nothing), false with REDIS_URL.
UPLOADS_STAGING_SHARED = env("UPLOADS_STAGING_SHARED", "bool", not REDIS_URL)
ATLAS_HOST_NAME = env("ATLAS_HOST_NAME") or socket.gethostname()
# Staged bytes missing: never failed for good (they may be on a host that is down); after this
# many attempts the tenant's Slack target hears about it (once per attachment).
UPLOADS_MISSING_ALERT_ATTEMPTS = env("UPLOADS_MISSING_ALERT_ATTEMPTS", "int", 3)
STORAGES["attachments"] = {
    "BACKEND": env(
        "UPLOADS_STORAGE_BACKEND", default="django.core.files.storage.FileSystemStorage"
    ),
    "OPTIONS": {"location": str(UPLOADS_STORAGE_DIR)},
}
# Finalisation retries: exponential backoff base * 2**(attempts-1), capped; then `failed`.
UPLOADS_RETRY_BACKOFF_BASE_SECONDS = env("UPLOADS_RETRY_BACKOFF_BASE_SECONDS", "int", 60)
UPLOADS_RETRY_BACKOFF_MAX_SECONDS = env("UPLOADS_RETRY_BACKOFF_MAX_SECONDS", "int", 6 * 3600)
UPLOADS_MAX_ATTEMPTS = env("UPLOADS_MAX_ATTEMPTS", "int", 8)
# One retry run claims at most this many attachments (keeps a scheduled task short).
UPLOADS_RETRY_BATCH_SIZE = env("UPLOADS_RETRY_BATCH_SIZE", "int", 100)
# A claim older than this is considered abandoned (crashed run) and can be claimed again.
UPLOADS_RETRY_LEASE_SECONDS = env("UPLOADS_RETRY_LEASE_SECONDS", "int", 300)
# client-sync / manual runs skip attachments attempted less than this many seconds ago.
UPLOADS_RETRY_MIN_INTERVAL_SECONDS = env("UPLOADS_RETRY_MIN_INTERVAL_SECONDS", "int", 30)
UPLOADS_RETRY_LOG_RETENTION_DAYS = env("UPLOADS_RETRY_LOG_RETENTION_DAYS", "int", 30)
# An unfinished tus upload expires (410, then cleaned up) this long after its last byte.
UPLOADS_TUS_EXPIRY_HOURS = env("UPLOADS_TUS_EXPIRY_HOURS", "int", 24)
# Health alert: failure rate of the last hour above this (0..1) with at least N attempts.
UPLOADS_ALERT_FAILURE_RATE = env("UPLOADS_ALERT_FAILURE_RATE", "float", 0.2)
UPLOADS_ALERT_MIN_ATTEMPTS = env("UPLOADS_ALERT_MIN_ATTEMPTS", "int", 10)
for _name in ("UPLOADS_MAX_BYTES", "UPLOADS_MAX_ATTEMPTS", "UPLOADS_RETRY_BATCH_SIZE",
              "UPLOADS_MISSING_ALERT_ATTEMPTS",
              "UPLOADS_RETRY_LEASE_SECONDS", "UPLOADS_TUS_EXPIRY_HOURS"):  # fmt: skip
    if globals()[_name] <= 0:
        raise ImproperlyConfigured(f"{_name}={globals()[_name]} must be positive")
if not 0 < UPLOADS_ALERT_FAILURE_RATE <= 1:
    raise ImproperlyConfigured("UPLOADS_ALERT_FAILURE_RATE must be in (0, 1]")
# Uploads: no tenant fills the disk (issue 13). Quota = bytes held (pending, stored, failed) +
# bytes announced by open tus uploads; open tus uploads per tenant; a tighter per-upload maximum
# for publishable keys; free space the staging disk keeps after an upload's announced size;
# staging files no row needs are removed once untouched this long.
UPLOADS_TENANT_QUOTA_BYTES = env("UPLOADS_TENANT_QUOTA_BYTES", "int", 10 * 1024**3)
UPLOADS_TENANT_MAX_OPEN = env("UPLOADS_TENANT_MAX_OPEN", "int", 100)
UPLOADS_PUBLISHABLE_MAX_BYTES = env("UPLOADS_PUBLISHABLE_MAX_BYTES", "int", 25 * 1024**2)
UPLOADS_STAGING_MIN_FREE_BYTES = env("UPLOADS_STAGING_MIN_FREE_BYTES", "int", 1024**3)
UPLOADS_STAGING_ORPHAN_GRACE_MINUTES = env("UPLOADS_STAGING_ORPHAN_GRACE_MINUTES", "int", 60)
for _name in ("UPLOADS_TENANT_QUOTA_BYTES", "UPLOADS_TENANT_MAX_OPEN",
              "UPLOADS_PUBLISHABLE_MAX_BYTES", "UPLOADS_STAGING_ORPHAN_GRACE_MINUTES"):  # fmt: skip
    if globals()[_name] <= 0:
        raise ImproperlyConfigured(f"{_name}={globals()[_name]} must be positive")
if UPLOADS_STAGING_MIN_FREE_BYTES < 0:
    raise ImproperlyConfigured("UPLOADS_STAGING_MIN_FREE_BYTES must be 0 or more")

# --- Assessments (issue 3) ---------------------------------------------------------------------
# Analytics events: per-request count and size caps, per-event size cap (bigger: rejected alone).
ASSESSMENTS_EVENTS_MAX_PER_REQUEST = env("ASSESSMENTS_EVENTS_MAX_PER_REQUEST", "int", 500)
ASSESSMENTS_EVENTS_MAX_REQUEST_BYTES = env(
    "ASSESSMENTS_EVENTS_MAX_REQUEST_BYTES", "int", 512 * 1024
)
ASSESSMENTS_EVENT_MAX_BYTES = env("ASSESSMENTS_EVENT_MAX_BYTES", "int", 32 * 1024)
# Best-effort ingest never holds a web worker long: the insert gives up after this.
ASSESSMENTS_EVENTS_STATEMENT_TIMEOUT_MS = env(
    "ASSESSMENTS_EVENTS_STATEMENT_TIMEOUT_MS", "int", 2000
)
# Answers: per request (batch) and per answer; a submission's answers + result in total.
ASSESSMENTS_MAX_ANSWERS_PER_REQUEST = env("ASSESSMENTS_MAX_ANSWERS_PER_REQUEST", "int", 200)
ASSESSMENTS_ANSWER_MAX_BYTES = env("ASSESSMENTS_ANSWER_MAX_BYTES", "int", 32 * 1024)
ASSESSMENTS_SUBMISSION_MAX_BYTES = env("ASSESSMENTS_SUBMISSION_MAX_BYTES", "int", 200 * 1024)
# Sessions idle this long (started / in progress) are marked abandoned by a schedule.
ASSESSMENTS_ABANDON_AFTER_MINUTES = env("ASSESSMENTS_ABANDON_AFTER_MINUTES", "int", 24 * 60)
# Analytics events older than this are deleted by a daily schedule (assessments_events_prune).
ASSESSMENTS_EVENTS_RETENTION_DAYS = env("ASSESSMENTS_EVENTS_RETENTION_DAYS", "int", 90)
# The /demo/ page's publishable key; unset: read from var/demo-credentials.json (atlas_demo).
ASSESSMENTS_DEMO_PUBLISHABLE_KEY = env("ASSESSMENTS_DEMO_PUBLISHABLE_KEY")

# --- Logging ------------------------------------------------------------------------------------
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
LOG_FORMAT = env("LOG_FORMAT", default="text")
# runserver's and uvicorn's access lines (`make run` sets WARNING: only 4xx/5xx are shown)
ACCESS_LOG_LEVEL = env("ACCESS_LOG_LEVEL", default="INFO")
if LOG_FORMAT not in {"text", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} must be 'text' or 'json'")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "core.logging.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    # access lines of runserver and uvicorn name the path, never the query string
    "filters": {"path_only": {"()": "core.logging.PathOnlyAccessFilter"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        **{
            name: {
                "handlers": ["console"],
                "level": ACCESS_LOG_LEVEL,
                "propagate": False,
                "filters": ["path_only"],
            }
            for name in ("django.server", "uvicorn.access")
        },
        "django.db.backends": {"level": "WARNING"},
        # the SDK logs every API call at INFO; payments logs the failures itself
        "stripe": {"level": "WARNING"},
    },
}

# --- Metrics (GET /metrics) ------------------------------------------------------------------
# With a token, scrapers send `Authorization: Bearer <token>`; without, only these networks.
METRICS_TOKEN = env("METRICS_TOKEN", default="")
METRICS_ALLOWED_NETWORKS = env(
    "METRICS_ALLOWED_NETWORKS",
    "list",
    ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
)
try:
    import ipaddress as _ipaddress

    for _net in METRICS_ALLOWED_NETWORKS:
        _ipaddress.ip_network(_net)
except ValueError as _exc:
    raise ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS: {_exc}") from _exc

# The admin URL and the demo set-up printed by `make run`.
ATLAS_BASE_URL = env("ATLAS_BASE_URL", default="http://127.0.0.1:8000")
# Where browsers reach the realtime (ASGI) server; default: ATLAS_BASE_URL's host on
# OUTBOX_REALTIME_PORT (what `make run` starts).
ATLAS_REALTIME_BASE_URL = env(
    "ATLAS_REALTIME_BASE_URL",
    default=urllib.parse.urlsplit(ATLAS_BASE_URL)
    ._replace(netloc=f"{urllib.parse.urlsplit(ATLAS_BASE_URL).hostname}:{OUTBOX_REALTIME_PORT}")
    .geturl(),
)
# The demo run's extras (the webhook inspector at /demo/inbox, the demo page's realtime token):
# they show the demo tenant's events to anyone who reaches the server, so off unless set
# (`make run` sets it for the processes it starts).
ATLAS_DEMO_MODE = env("ATLAS_DEMO_MODE", "bool", False)

# --- Operations (admin dashboard, atlas_status, /metrics database series) ---------------------
# A pending payment older than this is "stale": Stripe Checkout Sessions expire within 24 h, so
# reconcile should have settled it by then.
OPS_PAYMENTS_STALE_HOURS = env("OPS_PAYMENTS_STALE_HOURS", "int", 25)
# A pending upload whose retry was due longer ago than this means the retry schedule is stuck.
OPS_UPLOADS_OVERDUE_MINUTES = env("OPS_UPLOADS_OVERDUE_MINUTES", "int", 30)
# /metrics: attempts, retries and latency histograms cover the last N minutes of rows.
METRICS_WINDOW_MINUTES = env("METRICS_WINDOW_MINUTES", "int", 60)
for _name in (
    "OPS_PAYMENTS_STALE_HOURS",
    "OPS_UPLOADS_OVERDUE_MINUTES",
    "METRICS_WINDOW_MINUTES",
    "OUTBOX_PRUNE_DAYS",
    "OUTBOX_ATTEMPT_RETENTION_DAYS",
    "ASSESSMENTS_EVENTS_RETENTION_DAYS",
):
    if globals()[_name] <= 0:
        raise ImproperlyConfigured(f"{_name}={globals()[_name]} must be positive")
