"""Kept for config.urls' `include("outbox.realtime_urls")`: the patterns live with the view."""

from outbox.realtime.urls import urlpatterns

__all__ = ["urlpatterns"]
