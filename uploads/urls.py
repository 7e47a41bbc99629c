from django.urls import path

from uploads import api

urlpatterns = [
    path("", api.UploadCreateView.as_view(), name="uploads-create"),
    path("retry", api.UploadRetryView.as_view(), name="uploads-retry"),
    path("tus/", api.TusCreateView.as_view(), name="uploads-tus-create"),
    path("tus/<uuid:attachment_id>", api.TusUploadView.as_view(), name="uploads-tus-upload"),
    path("<uuid:attachment_id>", api.UploadDetailView.as_view(), name="uploads-detail"),
]
