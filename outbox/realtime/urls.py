from django.urls import path

from outbox.realtime import api, stream

urlpatterns = [
    path("stream", stream.stream, name="realtime-stream"),
    path("tokens", api.RealtimeTokenView.as_view(), name="realtime-tokens"),
]
