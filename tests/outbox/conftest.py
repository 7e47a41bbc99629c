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
