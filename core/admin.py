"""Admin pieces every app's console shares: read-only bases, the age filter, a capped
paginator, display helpers (indented JSON, human sizes and durations), and the two rules of
every action: it declares the permission it needs, and it leaves a LogEntry."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from django.contrib import admin
from django.contrib.admin.models import CHANGE, LogEntry
from django.core.paginator import Paginator
from django.db.models import Q
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html


class NoAddMixin:
    """Rows are created by the system (API, worker, webhooks), never by hand. A page whose
    every field is read-only shows no Save buttons: there is nothing to save."""

    def has_add_permission(self, request, obj=None):
        return False

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        admin_form = context.get("adminform")
        if not add and admin_form is not None and not admin_form.form.fields:
            context.update(
                show_save=False, show_save_and_continue=False, show_save_and_add_another=False
            )
        return super().render_change_form(
            request, context, add=add, change=change, form_url=form_url, obj=obj
        )


class NoDeleteMixin:
    """Deleting loses evidence: no delete button and no bulk "delete selected"."""

    def has_delete_permission(self, request, obj=None):
        return False

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions


class ReadOnlyMixin(NoAddMixin, NoDeleteMixin):
    """Evidence: never added, edited or deleted by hand."""

    def has_change_permission(self, request, obj=None):
        return False


class ReadOnlyAdmin(ReadOnlyMixin, admin.ModelAdmin):
    pass


class AppendOnlyAdmin(NoAddMixin, NoDeleteMixin, admin.ModelAdmin):
    """Rows made by the system that staff may still steer through actions."""


class ReadOnlyInline(ReadOnlyMixin, admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True


class AgeFilter(admin.SimpleListFilter):
    """How old a row is (created_at): recent windows, or older than a day or a week."""

    title = "age"
    parameter_name = "age"
    WINDOWS = {
        "1h": ("last hour", timedelta(hours=1), False),
        "24h": ("last 24 hours", timedelta(hours=24), False),
        "7d": ("last 7 days", timedelta(days=7), False),
        "older-24h": ("older than 24 hours", timedelta(hours=24), True),
        "older-7d": ("older than 7 days", timedelta(days=7), True),
    }
    ALIASES = {"older": "older-7d"}  # the uploads console's earlier name

    def lookups(self, request, model_admin):
        return [(key, label) for key, (label, _delta, _older) in self.WINDOWS.items()]

    def queryset(self, request, queryset):
        value = self.ALIASES.get(self.value() or "", self.value())
        if value not in self.WINDOWS:
            return queryset
        _label, delta, older = self.WINDOWS[value]
        cutoff = timezone.now() - delta
        if older:
            return queryset.filter(created_at__lt=cutoff)
        return queryset.filter(created_at__gte=cutoff)


class CappedPaginator(Paginator):
    """Never runs COUNT(*): the "count" is how many rows exist up to PAGES_AHEAD pages past
    the page asked for, read as primary keys along the list's own ordering (its index). The
    first pages of a list of millions cost a few pages of index entries; deeper pages stay
    reachable one jump of PAGES_AHEAD at a time, down to MAX_PAGE (deeper history is reached
    with filters: a page number in the millions would read millions of index entries). The
    number shown is therefore "at least". The database counts the keys (a COUNT over the
    LIMITed subquery): none of them is loaded into the web process."""

    PAGES_AHEAD = 10
    MAX_PAGE = 1000

    def __init__(self, object_list, per_page, orphans=0, allow_empty_first_page=True, page=1):
        super().__init__(object_list, per_page, orphans, allow_empty_first_page)
        self.page_hint = min(max(1, page), self.MAX_PAGE)

    @cached_property
    def count(self):
        limit = (self.page_hint + self.PAGES_AHEAD) * self.per_page
        return self.object_list.values("pk")[:limit].count()


class HistoryAdminMixin:
    """For tables that grow with history (events, deliveries, analytics events, attachments,
    Stripe events): no COUNT(*) (neither the full one nor the paginator's), no facet counts,
    no "show all". Order such a list by an indexed column (a serial key or seq) and keep its
    filters to choices, small tables (tenants, targets) or RecentValuesFilter."""

    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedPaginator
    list_per_page = 100
    list_max_show_all = 100

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        page = request.GET.get("p", "")
        return self.paginator(
            queryset,
            per_page,
            orphans,
            allow_empty_first_page,
            page=int(page) if page.isdigit() and len(page) < 9 else 1,
        )


class RecentValuesFilter(admin.SimpleListFilter):
    """Exact-match filter whose choices are the values seen among the newest RECENT rows
    (a bounded read along the primary key), instead of Django's DISTINCT over the whole
    table. Subclass with `title`, `parameter_name` (the field, e.g. "name") and optionally
    `field` when the value lives behind a relation."""

    RECENT = 5000
    field: str | None = None

    def lookups(self, request, model_admin):
        # the newest RECENT values along the primary key, deduplicated here: a DISTINCT or
        # an IN (… LIMIT) would let the planner read the whole table
        field = self.field or self.parameter_name
        newest = model_admin.model._default_manager.order_by("-pk")
        values = set(newest.values_list(field, flat=True)[: self.RECENT])
        return [(v, v) for v in sorted(v for v in values if v)]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(**{self.field or self.parameter_name: self.value()})
        return queryset


def exact_uuid_search(queryset, search_term: str, *fields: str):
    """Admin search on big tables: an exact UUID on indexed columns, or nothing (a `contains`
    search would scan the whole table)."""
    term = search_term.strip()
    if not term:
        return queryset, False
    try:
        value = uuid.UUID(term)
    except ValueError:
        return queryset.none(), False
    query = Q()
    for field in fields:
        query |= Q(**{field: value})
    return queryset.filter(query), False


def pretty_json(value) -> str:
    return format_html(
        '<pre class="atlas-json">{}</pre>',
        json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True),
    )


def pretty_json_field(name: str):
    """A read-only display of the JSONField `name`, indented: in a ModelAdmin,
    `payload_pretty = pretty_json_field("payload")`, listed where `payload` was."""

    @admin.display(description=name.replace("_", " "))
    def show(self, obj):
        return pretty_json(getattr(obj, name))

    return show


def readonly_with_pretty_json(model) -> list[str]:
    """Every field of `model`, read-only, JSONFields as their `<name>_pretty` display."""
    from django.db.models import JSONField

    return [f"{f.name}_pretty" if isinstance(f, JSONField) else f.name for f in model._meta.fields]


def human_bytes(size: int | None) -> str:
    """1536 → "1.5 KB" (powers of 1024, the unit storage quotas use)."""
    if size is None:
        return "—"
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    """0.0123 → "12 ms", 95 → "1 min 35 s", 7300 → "2 h 1 min", 200000 → "2 d 7 h"."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    whole = int(seconds)
    for size, unit, next_size, next_unit in (
        (86400, "d", 3600, "h"),
        (3600, "h", 60, "min"),
        (60, "min", 1, "s"),
    ):
        if whole >= size:
            rest = whole % size // next_size
            return f"{whole // size} {unit}" + (f" {rest} {next_unit}" if rest else "")
    raise AssertionError("unreachable")


# --- Actions: each declares its permission, each leaves a LogEntry ---------------------------


def permission_check(codename: str):
    """`has_<name>_permission` for `@admin.action(permissions=["<name>"])`: the user holds the
    model app's permission `codename` (e.g. tenants.create_apikey)."""

    def has_permission(self, request) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    has_permission.__name__ = f"has_{codename}_permission"
    return has_permission


def log_admin_action(
    request, objects, *, action: str, selected: int, changed: int, detail: str = "", flag=None
) -> None:
    """One admin LogEntry per row (who, which row, which action, how many rows it touched),
    so each row's history page shows what staff did to it."""
    rows = list(objects)
    if not rows:
        return
    message = f"Action {action}: {selected} selected, {changed} changed."
    if detail:
        message = f"{message} {detail}"
    LogEntry.objects.log_actions(
        user_id=request.user.pk,
        queryset=rows,
        action_flag=CHANGE if flag is None else flag,
        change_message=message,
    )


def check_actions_declare_permissions(site=None, **kwargs):
    """System check (registered by ops.admin): an admin action without `permissions=[...]`,
    or one that only needs "view", is offered to anyone who may look at the list."""
    from django.core import checks

    site = site or admin.site
    errors = []
    for model, model_admin in site._registry.items():
        for func, name, _description in model_admin._get_base_actions():
            needed = set(getattr(func, "allowed_permissions", ()) or ())
            if not needed or needed == {"view"}:
                errors.append(
                    checks.Error(
                        f"admin action {name!r} of {model._meta.label} declares no permission "
                        "beyond view",
                        hint="@admin.action(permissions=[...]) with the permission it needs",
                        obj=type(model_admin),
                        id="atlas.E001",
                    )
                )
    return errors
