"""Turn each Figure into a link to its admin list, only for users who may view that list."""

from __future__ import annotations

from urllib.parse import urlencode

from django.apps import apps
from django.contrib import admin
from django.urls import reverse

from core.figures import Figure


def changelist_url(model_label: str, filters: dict) -> str:
    app_label, model_name = model_label.split(".")
    url = reverse(f"admin:{app_label}_{model_name}_changelist")
    return f"{url}?{urlencode(filters)}" if filters else url


def can_view(request, model_label: str) -> bool:
    """The ModelAdmin's own answer (view or change permission), as the admin itself asks."""
    model = apps.get_model(model_label)
    if not admin.site.is_registered(model):
        return False
    return admin.site.get_model_admin(model).has_view_permission(request)


def resolve(data, request, _cache=None):
    """Walk dicts/lists and set `url` on every Figure the user may follow."""
    cache = {} if _cache is None else _cache
    if isinstance(data, Figure):
        if data.model not in cache:
            cache[data.model] = can_view(request, data.model)
        data.url = changelist_url(data.model, data.filters) if cache[data.model] else None
    elif isinstance(data, dict):
        for value in data.values():
            resolve(value, request, cache)
    elif isinstance(data, list | tuple):
        for value in data:
            resolve(value, request, cache)
    return data
