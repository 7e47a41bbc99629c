"""Non-API pages (the demo assessment page lives in the assessments app once it exists)."""

from django.urls import path
from django.views.generic import RedirectView

from assessments.views import demo_page

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("demo/", demo_page, name="demo"),
]
