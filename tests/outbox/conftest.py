import pytest

from tests.outbox.receiver import start_receiver


@pytest.fixture
def receiver():
    state, server = start_receiver()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _fast_outbox(settings):
    # short timings so retries and leases play out in seconds, not minutes
    settings.OUTBOX_BACKOFF_BASE_SECONDS = 60
    settings.OUTBOX_WORKER_CONCURRENCY = 8


@pytest.fixture(autouse=True)
def _loopback_targets_allowed(settings, monkeypatch):
    """The receivers of these tests listen on 127.0.0.1, which the egress guard refuses unless
    the operator allows it; worker processes started by a test inherit it through the
    environment. The SSRF tests set the allowance back to empty."""
    settings.OUTBOX_ALLOWED_TARGET_NETWORKS = ["127.0.0.0/8"]
    monkeypatch.setenv("OUTBOX_ALLOWED_TARGET_NETWORKS", "127.0.0.0/8")
