from django.urls import path

from outbox import api

urlpatterns = [
    path("events", api.EventsView.as_view(), name="outbox-events"),
    path("events/<uuid:event_id>", api.EventDetailView.as_view(), name="outbox-event"),
    path("targets", api.TargetsView.as_view(), name="outbox-targets"),
    path("targets/<slug:name>", api.TargetDetailView.as_view(), name="outbox-target"),
    path("targets/<slug:name>/replay", api.TargetReplayView.as_view(), name="outbox-replay"),
    path("targets/<slug:name>/secret", api.TargetSecretView.as_view(), name="outbox-secret"),
    path(
        "targets/<slug:name>/rotate-secret",
        api.TargetRotateSecretView.as_view(),
        name="outbox-rotate-secret",
    ),
]
