"""A malformed uploads setting stops start-up with a message naming the variable."""

import os
import subprocess
import sys

import pytest

from tests.processes import ROOT


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("UPLOADS_MAX_BYTES", "lots"),
        ("UPLOADS_MAX_BYTES", "0"),
        ("UPLOADS_MAX_ATTEMPTS", "-1"),
        ("UPLOADS_TUS_EXPIRY_HOURS", "0"),
        ("UPLOADS_ALERT_FAILURE_RATE", "20"),
        ("UPLOADS_ALERT_MIN_ATTEMPTS", "ten"),
        ("UPLOADS_TENANT_QUOTA_BYTES", "0"),
        ("UPLOADS_TENANT_MAX_OPEN", "many"),
        ("UPLOADS_PUBLISHABLE_MAX_BYTES", "-5"),
        ("UPLOADS_STAGING_MIN_FREE_BYTES", "-1"),
        ("UPLOADS_STAGING_ORPHAN_GRACE_MINUTES", "0"),
    ],
)
def test_bad_uploads_setting_stops_start_up(name, value):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings",
           "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none", name: value}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert name in result.stderr.splitlines()[-1]
