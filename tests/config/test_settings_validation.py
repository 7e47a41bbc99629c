"""A malformed setting stops start-up with a message naming the variable."""

import os
import subprocess
import sys

import pytest

from tests.processes import ROOT


def _start(**env):
    full = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "not a url at all"),
        ("DATABASE_URL", "mysql://root@127.0.0.1/atlas"),
        ("DB_CONN_MAX_AGE", "sixty"),
        ("OUTBOX_MAX_ATTEMPTS", "8.5"),
        ("API_KEY_CACHE_ENABLED", "maybe"),
        ("LOG_FORMAT", "xml"),
        ("Q_BROKER", "rabbit"),
        ("Q_BROKER", "redis"),  # without REDIS_URL
        ("UPLOADS_STAGING_SHARED", "perhaps"),
        ("UPLOADS_MISSING_ALERT_ATTEMPTS", "0"),
    ],
)
def test_malformed_value_stops_start_up_naming_the_variable(name, value):
    env = {"DATABASE_URL": "postgres://nobody@127.0.0.1:1/none", "REDIS_URL": "", name: value}
    result = _start(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert name in result.stderr.splitlines()[-1]


def test_good_values_start():
    result = _start(DATABASE_URL="postgres://nobody@127.0.0.1:1/none", DB_CONN_MAX_AGE="30")
    assert result.returncode == 0, result.stderr


def test_redis_url_makes_redis_the_cache_and_the_broker_and_staging_host_local():
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.CACHES['default']['BACKEND'], s.Q_CLUSTER.get('redis'), 'orm' in s.Q_CLUSTER, "
        "s.UPLOADS_STAGING_SHARED)"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings",
           "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none"}  # fmt: skip
    for redis_url, expected in (
        ("redis://127.0.0.1:6399/0",
         "django.core.cache.backends.redis.RedisCache redis://127.0.0.1:6399/0 False False"),
        ("", "django.core.cache.backends.filebased.FileBasedCache None True True"),
    ):  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env={**env, "REDIS_URL": redis_url},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.stdout.strip() == expected, result.stderr


def test_a_staging_storage_without_local_paths_stops_start_up():
    result = _start(
        DATABASE_URL="postgres://nobody@127.0.0.1:1/none",
        UPLOADS_STAGING_BACKEND="django.core.files.storage.Storage",  # no path()
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "no local paths" in result.stderr
