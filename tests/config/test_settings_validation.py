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
    ],
)
def test_malformed_value_stops_start_up_naming_the_variable(name, value):
    env = {"DATABASE_URL": "postgres://nobody@127.0.0.1:1/none", name: value}
    result = _start(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert name in result.stderr.splitlines()[-1]


def test_good_values_start():
    result = _start(DATABASE_URL="postgres://nobody@127.0.0.1:1/none", DB_CONN_MAX_AGE="30")
    assert result.returncode == 0, result.stderr
