"""The outbox console: find what is stuck, see every try, requeue or cancel, steer targets."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Count, Exists, F, Min, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from core.admin import (
    AgeFilter,
    HistoryAdminMixin,
    NoAddMixin,
    NoDeleteMixin,
    ReadOnlyAdmin,
    ReadOnlyInline,
    RecentValuesFilter,
    exact_uuid_search,
    human_duration,
    log_admin_action,
    permission_check,
    pretty_json_field,
    readonly_with_pretty_json,
)
from core.errors import DomainError
from outbox import replay, routing, selectors, services
from outbox.models import (
    CircuitTransition,
    Delivery,
    DeliveryAttempt,
    DeliveryStat,
    OutboxEvent,
    ReplayRequest,
    Target,
    WorkerHeartbeat,
)
from outbox.selectors import UNSETTLED, minute_floor


class DeliveryAttemptInline(ReadOnlyInline):
    model = DeliveryAttempt
    fields = [
        "number",
        "outcome",
        "status_code",
        "took",
        "error",
        "response_excerpt",
        "worker",
        "created_at",
    ]
    readonly_fields = fields
    ordering = ["number"]

    @admin.display(description="took")
    def took(self, obj):
        return human_duration(obj.duration_ms / 1000)


class DeliveryInline(ReadOnlyInline):
    model = Delivery
    fields = ["delivery_link", "target_link", "status", "attempts", "delivered_at", "last_error"]
    readonly_fields = fields
    show_change_link = False  # the first column is the link, named after what it opens

    @admin.display(description="delivery")
    def delivery_link(self, obj):
        url = reverse("admin:outbox_delivery_change", args=[obj.pk])
        return format_html('<a href="{}">{} → {}</a>', url, obj.event.event_type, obj.target.name)

    @admin.display(description="target")
    def target_link(self, obj):
        url = reverse("admin:outbox_target_change", args=[obj.target_id])
        return format_html('<a href="{}">{} ({})</a>', url, obj.target.name, obj.target.kind)


def _status_badge(status: str):
    return format_html('<span class="atlas-status {}">{}</span>', status, status.replace("_", " "))


class EventStatusFilter(admin.SimpleListFilter):
    """The event's one-word status (as the API says it): its worst delivery wins."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        labels = {selectors.NO_TARGETS: "no matching target"}
        return [(s, labels.get(s, s)) for s in (*selectors.STATUS_RANK, selectors.NO_TARGETS)]

    def queryset(self, request, queryset):
        if self.value() not in selectors.EVENT_STATUSES:
            return queryset
        return queryset.filter(selectors.events_in_status_q(self.value()))


def _report(modeladmin, request, count, verb):
    modeladmin.message_user(request, f"{count} deliveries {verb}.", messages.SUCCESS)


def _steer_deliveries(modeladmin, request, queryset, deliveries, *, action, service, verb):
    """Requeue or cancel the deliveries behind the selected rows; each selected row's history
    records who did it and how many deliveries changed."""
    rows = list(queryset)
    with transaction.atomic():
        count = service(deliveries=deliveries)
        log_admin_action(
            request,
            rows,
            action=action,
            selected=len(rows),
            changed=count,
            detail=f"{count} deliveries {verb}.",
        )
    _report(modeladmin, request, count, verb)


def _steer_targets(modeladmin, request, queryset, *, action, service, verb):
    targets = list(queryset)
    with transaction.atomic():
        changed = sum(service(target=t) for t in targets)
        log_admin_action(request, targets, action=action, selected=len(targets), changed=changed)
    modeladmin.message_user(request, f"{changed} targets {verb}.")


class TargetNameFilter(admin.SimpleListFilter):
    """Target names from the (small) target table, not a DISTINCT over the history; the
    parameter keeps the name the dashboard's links use."""

    title = "target"
    parameter_name = "target__name"
    lookup = "target__name"

    def lookups(self, request, model_admin):
        names = Target.objects.order_by("name").values_list("name", flat=True).distinct()
        return [(name, name) for name in names]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        if queryset.model is OutboxEvent:  # an EXISTS, never a join that needs DISTINCT
            routed = Delivery.objects.filter(event=OuterRef("pk"), target__name=self.value())
            return queryset.filter(Exists(routed))
        return queryset.filter(target__name=self.value())


class EventDeliveryStatusFilter(admin.SimpleListFilter):
    """Events with at least one delivery in this state (an EXISTS, no DISTINCT)."""

    title = "delivery status"
    parameter_name = "deliveries__status__exact"

    def lookups(self, request, model_admin):
        return Delivery.Status.choices

    def queryset(self, request, queryset):
        if self.value() not in Delivery.Status.values:
            return queryset
        return queryset.filter(selectors.events_with_status_q(self.value()))


class TopicFilter(RecentValuesFilter):
    title = "topic"
    parameter_name = "topic"


class EventTypeFilter(RecentValuesFilter):
    title = "event type"
    parameter_name = "event_type"


@admin.register(OutboxEvent)
class OutboxEventAdmin(HistoryAdminMixin, NoAddMixin, NoDeleteMixin, admin.ModelAdmin):
    """Evidence: never added by hand, pruned by outbox_prune only. Newest first by seq (its
    unique index); search by exact event id."""

    list_display = ["event_type", "status", "topic", "tenant", "seq", "created_at"]
    list_filter = [
        EventStatusFilter,
        EventDeliveryStatusFilter,
        TargetNameFilter,
        "tenant",
        TopicFilter,
        EventTypeFilter,
        AgeFilter,
    ]
    ordering = ["-seq"]
    search_fields = ["=id"]
    search_help_text = "An event id (exact)."
    list_select_related = ["tenant"]
    readonly_fields = [*readonly_with_pretty_json(OutboxEvent), "attempt_log"]
    exclude = ["payload"]  # shown indented by payload_pretty
    inlines = [DeliveryInline]
    actions = ["requeue_now", "cancel"]

    def get_search_results(self, request, queryset, search_term):
        return exact_uuid_search(queryset, search_term, "id")

    def lookup_allowed(self, lookup, value, request=None):
        # the status filter keeps the parameter name of Django's own relation filter
        if lookup == EventDeliveryStatusFilter.parameter_name:
            return True
        return super().lookup_allowed(lookup, value, request)

    has_requeue_delivery_permission = permission_check("requeue_delivery")
    has_cancel_delivery_permission = permission_check("cancel_delivery")

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("deliveries")

    @admin.display(description="status")
    def status(self, obj):
        return _status_badge(selectors.event_status(deliveries=obj.deliveries.all()))

    payload_pretty = pretty_json_field("payload")

    @admin.display(description="attempts (every try, every target)")
    def attempt_log(self, obj):
        attempts = (
            DeliveryAttempt.objects.filter(delivery__event=obj)
            .select_related("delivery__target")
            .order_by("created_at", "id")
        )
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    a.created_at,
                    a.delivery.target.name,
                    a.number,
                    a.status_code or "—",
                    human_duration(a.duration_ms / 1000),
                    a.error or a.response_excerpt[:200],
                )
                for a in attempts
            ),
        )
        head = "<tr><th>at</th><th>target</th><th>#</th><th>status</th><th>took</th><th></th></tr>"
        return format_html("<table>{}{}</table>", mark_safe(head), rows) if rows else "—"

    @admin.action(
        description="Requeue now (dead, cancelled or waiting deliveries)",
        permissions=["requeue_delivery"],
    )
    def requeue_now(self, request, queryset):
        deliveries = Delivery.objects.filter(event__in=queryset)
        _steer_deliveries(
            self,
            request,
            queryset,
            deliveries,
            action="requeue_now",
            service=services.delivery_requeue,
            verb="requeued",
        )

    @admin.action(description="Cancel open deliveries", permissions=["cancel_delivery"])
    def cancel(self, request, queryset):
        deliveries = Delivery.objects.filter(event__in=queryset)
        _steer_deliveries(
            self,
            request,
            queryset,
            deliveries,
            action="cancel",
            service=services.delivery_cancel,
            verb="cancelled",
        )


@admin.register(Delivery)
class DeliveryAdmin(HistoryAdminMixin, NoAddMixin, NoDeleteMixin, admin.ModelAdmin):
    """Newest first by id (the primary key); open and dead rows come from their partial
    indexes; search by exact event id."""

    list_display = [
        "event_link",
        "target",
        "tenant",
        "status_badge",
        "attempts",
        "next_attempt_at",
        "last_error_short",
        "created_at",
    ]
    list_filter = ["status", TargetNameFilter, "target__kind", "tenant", AgeFilter]
    ordering = ["-id"]
    search_fields = ["=event__id"]
    search_help_text = "An event id (exact)."
    list_select_related = ["event", "target", "tenant"]
    readonly_fields = [f.name for f in Delivery._meta.fields]
    inlines = [DeliveryAttemptInline]
    actions = ["requeue_now", "cancel"]

    def get_search_results(self, request, queryset, search_term):
        return exact_uuid_search(queryset, search_term, "event_id")

    has_requeue_delivery_permission = permission_check("requeue_delivery")
    has_cancel_delivery_permission = permission_check("cancel_delivery")

    @admin.display(description="last error")
    def last_error_short(self, obj):
        return obj.last_error[:80]

    @admin.display(description="event", ordering="event__created_at")
    def event_link(self, obj):
        url = reverse("admin:outbox_outboxevent_change", args=[obj.event_id])
        return format_html('<a href="{}">{}</a>', url, obj.event.event_type)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return _status_badge(obj.status)

    @admin.action(description="Requeue now", permissions=["requeue_delivery"])
    def requeue_now(self, request, queryset):
        _steer_deliveries(
            self,
            request,
            queryset,
            queryset,
            action="requeue_now",
            service=services.delivery_requeue,
            verb="requeued",
        )

    @admin.action(description="Cancel", permissions=["cancel_delivery"])
    def cancel(self, request, queryset):
        _steer_deliveries(
            self,
            request,
            queryset,
            queryset,
            action="cancel",
            service=services.delivery_cancel,
            verb="cancelled",
        )


class CircuitTransitionInline(ReadOnlyInline):
    model = CircuitTransition
    fields = ["created_at", "from_state", "to_state", "reason"]
    readonly_fields = fields
    show_change_link = False
    ordering = ["-created_at"]


class ReplayForm(forms.Form):
    since = forms.DateTimeField(help_text="Events published at or after (YYYY-MM-DD HH:MM).")
    until = forms.DateTimeField(help_text="…and before.")
    status = forms.ChoiceField(
        required=False,
        choices=[("", "dead and cancelled, and back-fill")] + [(s, s) for s in replay.REPLAYABLE],
    )


class TargetAdminForm(forms.ModelForm):
    """Staff edits go through the same rules as the API: the egress guard on the URL, the
    timeout cap, no control characters in the name."""

    url = forms.URLField(max_length=2000, required=False, assume_scheme="https")

    class Meta:
        model = Target
        fields = [
            "tenant",
            "name",
            "kind",
            "url",
            "is_enabled",
            "timeout_seconds",
            "max_attempts",
            "backoff_base_seconds",
            "backoff_max_seconds",
            "rate_limit_per_second",
            "event_types",
            "payload_filter",
            "permanent_statuses",
        ]

    def clean(self):
        cleaned = super().clean()
        checks = [
            ("name", lambda v: services.refuse_control_characters(name=v)),
            ("url", lambda v: services.target_url_check(v) if v else None),
            ("timeout_seconds", services.target_timeout_check),
            ("event_types", routing.event_types_check),
            ("payload_filter", routing.payload_filter_check),
            ("permanent_statuses", routing.permanent_statuses_check),
        ]
        for field, check in checks:
            value = cleaned.get(field)
            if value is None:
                continue
            try:
                check(value)
            except DomainError as refused:
                self.add_error(field, f"{refused.message} ({refused.code})")
        return cleaned


@admin.register(Target)
class TargetAdmin(admin.ModelAdmin):
    form = TargetAdminForm
    list_display = [
        "name",
        "tenant",
        "kind",
        "is_enabled",
        "paused",
        "circuit_state",
        "pending",
        "dead",
        "oldest_pending_age",
        "success_rate_24h",
    ]
    list_filter = ["kind", "circuit_state", "is_enabled", "tenant"]
    search_fields = ["name", "url"]
    list_select_related = ["tenant"]
    readonly_fields = [
        "circuit_state",
        "circuit_failures",
        "circuit_successes",
        "circuit_opened_at",
        "circuit_probe_until",
        "previous_secret_expires_at",
        "paused_at",
        "paused_reason",
    ]
    exclude = ["secret", "previous_secret"]  # shown by the API's secret endpoint, not here
    inlines = [CircuitTransitionInline]
    actions = ["pause", "resume", "reset_circuit", "send_test_event", "replay"]

    has_pause_target_permission = permission_check("pause_target")
    has_reset_target_circuit_permission = permission_check("reset_target_circuit")
    has_send_target_test_permission = permission_check("send_target_test")
    has_replay_target_permission = permission_check("replay_target")

    def get_queryset(self, request):
        """Per target: open/dead from the partial index, 24 h tries from the per-minute
        counters; one small subquery each, never a join with the delivery history."""
        since = minute_floor(timezone.now() - timedelta(hours=24))
        unsettled = (
            Delivery.objects.filter(target=OuterRef("pk"), status__in=UNSETTLED)
            .order_by()
            .values("target")
        )
        stats = (
            DeliveryStat.objects.filter(target=OuterRef("pk"), minute__gte=since)
            .order_by()
            .values("target")
        )

        def first(rows, aggregate, default=0):
            value = Subquery(rows.annotate(v=aggregate).values("v"))
            return value if default is None else Coalesce(value, default)

        open_q = Q(status__in=Delivery.OPEN_STATUSES)
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_pending=first(unsettled, Count("status", filter=open_q)),
                n_dead=first(unsettled, Count("status", filter=Q(status=Delivery.Status.DEAD))),
                oldest_pending=first(unsettled, Min("created_at", filter=open_q), None),
                tries_24h=first(stats, Sum("attempts")),
                ok_24h=first(stats, Sum("attempts_delivered")),
            )
        )

    @admin.display(boolean=True)
    def paused(self, obj):
        return obj.paused_at is not None

    @admin.display(ordering="n_pending")
    def pending(self, obj):
        return obj.n_pending

    @admin.display(ordering="n_dead")
    def dead(self, obj):
        return obj.n_dead

    @admin.display(description="oldest pending", ordering=F("oldest_pending").asc(nulls_last=True))
    def oldest_pending_age(self, obj):
        if not obj.oldest_pending:
            return "—"
        return human_duration((timezone.now() - obj.oldest_pending).total_seconds())

    @admin.display(description="success 24 h")
    def success_rate_24h(self, obj):
        return f"{100 * obj.ok_24h / obj.tries_24h:.1f}%" if obj.tries_24h else "—"

    @admin.action(description="Pause delivery", permissions=["pause_target"])
    def pause(self, request, queryset):
        _steer_targets(
            self, request, queryset, action="pause", service=services.target_pause, verb="paused"
        )

    @admin.action(description="Resume delivery", permissions=["pause_target"])
    def resume(self, request, queryset):
        _steer_targets(
            self, request, queryset, action="resume", service=services.target_resume, verb="resumed"
        )

    @admin.action(
        description="Reset circuit breaker (close it)", permissions=["reset_target_circuit"]
    )
    def reset_circuit(self, request, queryset):
        _steer_targets(
            self,
            request,
            queryset,
            action="reset_circuit",
            service=services.target_circuit_reset,
            verb="reset",
        )

    @admin.action(description="Replay deliveries in a date range…", permissions=["replay_target"])
    def replay(self, request, queryset):
        form = ReplayForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            context = {
                **self.admin_site.each_context(request),
                "title": "Replay deliveries",
                "opts": self.opts,
                "form": form,
                "targets": [t.name for t in queryset],
                "selected": [t.pk for t in queryset],
                "max_deliveries": replay.MAX_DELIVERIES,
                "max_days": replay.MAX_WINDOW_DAYS,
            }
            return TemplateResponse(request, "admin/outbox/target/replay.html", context)
        done = []
        for target in queryset:
            try:
                row, _new = replay.target_replay(
                    target=target,
                    since=form.cleaned_data["since"],
                    until=form.cleaned_data["until"],
                    status=form.cleaned_data["status"] or None,
                    rate_limited=False,  # staff, with the replay_target permission
                    requested_by=f"admin:{request.user.get_username()}",
                )
            except DomainError as exc:
                self.message_user(request, f"{target.name}: {exc.message}", messages.ERROR)
                continue
            done.append(target)
            self.message_user(
                request,
                f"{target.name}: {row.requeued} requeued, {row.backfilled} back-filled.",
                messages.SUCCESS,
            )
        log_admin_action(
            request,
            done,
            action="replay",
            selected=len(queryset),
            changed=len(done),
            detail=f"Window {form.cleaned_data['since']:%Y-%m-%d %H:%M} to "
            f"{form.cleaned_data['until']:%Y-%m-%d %H:%M}.",
        )
        return None

    @admin.action(description="Send a test event", permissions=["send_target_test"])
    def send_test_event(self, request, queryset):
        sent = []
        for target in queryset:
            try:
                services.target_test_send(target=target)
                sent.append(target)
            except DomainError as exc:
                self.message_user(request, f"{target.name}: {exc.message}", messages.ERROR)
        log_admin_action(
            request,
            sent,
            action="send_test_event",
            selected=len(queryset),
            changed=len(sent),
            detail="A test event was queued.",
        )
        self.message_user(request, f"{len(sent)} test events queued.")


@admin.register(ReplayRequest)
class ReplayRequestAdmin(ReadOnlyAdmin):
    """Every replay (API, admin action, command): who asked, which window, how many."""

    list_display = ["target", "tenant", "since", "until", "status", "requeued", "backfilled"]
    list_display += ["requested_by", "created_at"]
    list_filter = ["tenant", "requested_by"]
    list_select_related = ["target", "tenant"]


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(NoAddMixin, admin.ModelAdmin):
    list_display = ["worker_id", "started_at", "last_seen_at", "delivered", "stopped_at"]
    readonly_fields = ["worker_id", "started_at", "last_seen_at", "delivered", "stopped_at"]
