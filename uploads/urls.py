from django.urls import path

from uploads import api, tus_views

urlpatterns = [
    path("", api.UploadCreateView.as_view(), name="uploads-create"),
    path("retry", api.UploadRetryView.as_view(), name="uploads-retry"),
    path("tus/", tus_views.TusCreateView.as_view(), name="uploads-tus-create"),
    path("tus/<uuid:attachment_id>", tus_views.TusUploadView.as_view(), name="uploads-tus-upload"),
    path("<uuid:attachment_id>", api.UploadDetailView.as_view(), name="uploads-detail"),
]
