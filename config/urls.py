from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from core.api import handlers
from ops import health, metrics
from ops.dashboard import views as dashboard
from uploads.api import UploadCreateView

api_patterns = [
    path("", include("tenants.urls")),
    path("assessments/", include("assessments.urls")),
    path("outbox/", include("outbox.urls")),
    path("realtime/", include("outbox.realtime.urls")),
    # POST /api/uploads (no slash) too: a redirected POST would come back as a GET.
    path("uploads", UploadCreateView.as_view(), name="uploads-create-noslash"),
    path("uploads/", include("uploads.urls")),
    path("payments/", include("payments.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
]

urlpatterns = [
    # The admin index is the operations dashboard (the app list stays below it).
    path("admin/", admin.site.admin_view(dashboard.index), name="atlas_dashboard"),
    path("admin/", admin.site.urls),
    path("api/", include(api_patterns)),
    path("health", health.HealthView.as_view(), name="health"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("", include("config.site_urls")),
]

handler400 = handlers.bad_request
handler403 = handlers.permission_denied
handler404 = handlers.not_found
handler500 = handlers.server_error
