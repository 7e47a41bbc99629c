from django.urls import path

from outbox import realtime_views

urlpatterns = [path("stream", realtime_views.stream, name="realtime-stream")]
