"""Uploads tests: staging and storage under tmp_path, a storage that fails on demand."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.uploads.storage import StorageSwitch


@pytest.fixture(autouse=True)
def upload_dirs(settings, tmp_path):
    root = tmp_path / "uploads"
    root.mkdir()
    settings.UPLOADS_STAGING_DIR = root / "staging"
    settings.UPLOADS_STORAGE_DIR = root / "attachments"
    switch = StorageSwitch(root)
    settings.STORAGES = {
        **settings.STORAGES,
        "attachments": {
            "BACKEND": "tests.uploads.storage.FlakyStorage",
            "OPTIONS": {
                "location": str(root / "attachments"),
                "fail_flag": str(switch.fail_flag),
                "slow_flag": str(switch.slow_flag),
            },
        },
    }
    settings.UPLOADS_MAX_BYTES = 5 * 1024 * 1024
    settings.UPLOADS_ALLOWED_CONTENT_TYPES = []
    return switch


@pytest.fixture
def storage_switch(upload_dirs) -> StorageSwitch:
    return upload_dirs


@pytest.fixture
def plain_storage(settings, upload_dirs):
    """STORAGES["attachments"] as shipped: a FileSystemStorage next to staging (same disk)."""
    location = Path(settings.UPLOADS_STORAGE_DIR)
    settings.STORAGES = {
        **settings.STORAGES,
        "attachments": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(location)},
        },
    }
    return location


@pytest.fixture(autouse=True)
def _live_server_closes_connections(request, monkeypatch):
    """Live-server request threads would keep persistent database connections (CONN_MAX_AGE)
    open after the test, so the test database could not be dropped: close them per request."""
    if "live_server" in request.fixturenames:
        from django.db import connections

        monkeypatch.setitem(connections["default"].settings_dict, "CONN_MAX_AGE", 0)
