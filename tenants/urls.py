from django.urls import path

from tenants import api

urlpatterns = [
    path("auth/cache-stats", api.CacheStatsView.as_view(), name="auth-cache-stats"),
    path("auth/invalidate-cache", api.InvalidateCacheView.as_view(), name="auth-invalidate-cache"),
    path("keys", api.ApiKeyListView.as_view(), name="apikey-list"),
    path("keys/<uuid:key_id>/revoke", api.ApiKeyRevokeView.as_view(), name="apikey-revoke"),
]
