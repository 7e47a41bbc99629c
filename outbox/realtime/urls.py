from django.urls import path

from outbox.realtime import stream

urlpatterns = [path("stream", stream.stream, name="realtime-stream")]
