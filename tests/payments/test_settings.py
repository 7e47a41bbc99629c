"""Payments settings: a wrong value stops start-up naming the variable."""

import os
import subprocess
import sys

import pytest

from tests.processes import ROOT


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STRIPE_TIMEOUT_SECONDS", "soon"),
        ("STRIPE_TIMEOUT_SECONDS", "0"),
        ("STRIPE_WEBHOOK_TOLERANCE_SECONDS", "-5"),
        ("STRIPE_MAX_NETWORK_RETRIES", "-1"),
        ("STRIPE_CIRCUIT_FAILURE_THRESHOLD", "0"),
        ("PAYMENTS_RECONCILE_OLDER_THAN_MINUTES", "0"),
    ],
)
def test_bad_payments_setting_stops_start_up(name, value):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none",
        name: value,
    }
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    last = result.stderr.splitlines()[-1]
    assert "ImproperlyConfigured" in last
    assert name in last
