"""Browser fixtures for tests/assessments/test_browser.py (imported here so that test
modules do not shadow them)."""

from tests.browser import chromium_browser, chromium_page  # noqa: F401
