"""Non-API pages: the demo assessment page and, in the demo run, the webhook inspector."""

from django.urls import path
from django.views.generic import RedirectView

from assessments.views import demo_page
from ops.demo import views as demo

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("demo/", demo_page, name="demo"),
    path("demo/inbox", demo.inbox_view, name="demo-inbox"),
    path("demo/inbox/deliveries", demo.inbox_deliveries, name="demo-inbox-deliveries"),
    path("demo/realtime-token", demo.realtime_token, name="demo-realtime-token"),
]
