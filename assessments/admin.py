"""Operations console for assessments: sessions to inspect, read-only evidence tables."""

from __future__ import annotations

from django.contrib import admin, messages

from assessments import metrics
from assessments.models import AnalyticsEvent, AssessmentSession, Submission
from core.admin import (
    HistoryAdminMixin,
    ReadOnlyAdmin,
    ReadOnlyInline,
    RecentValuesFilter,
    exact_uuid_search,
    pretty_json,
)


class SubmissionInline(ReadOnlyInline):
    model = Submission
    fields = ("id", "created_at")
    readonly_fields = fields


@admin.register(AssessmentSession)
class AssessmentSessionAdmin(ReadOnlyAdmin):
    list_display = ("id", "tenant", "status", "email", "created_at", "last_activity_at")
    list_filter = ("status", "tenant", ("created_at", admin.DateFieldListFilter))
    list_select_related = ("tenant",)
    search_fields = ("email",)
    date_hierarchy = "created_at"
    list_per_page = 50
    show_full_result_count = False  # no COUNT(*) over a big table on every page
    fields = (
        "id",
        "tenant",
        "status",
        "email",
        "first_name",
        "responses_pretty",
        "form_data_pretty",
        "metadata_pretty",
        "created_at",
        "updated_at",
        "last_activity_at",
        "completed_at",
        "abandoned_at",
    )
    # View only: a form save would write back `responses` as loaded (a read-modify-write
    # that could drop a concurrent answer); sessions change only through the API's guarded
    # statements. Deleting would lose evidence (and submissions point at sessions).
    readonly_fields = fields
    inlines = [SubmissionInline]

    @admin.display(description="responses")
    def responses_pretty(self, obj):
        return pretty_json(obj.responses)

    @admin.display(description="form data")
    def form_data_pretty(self, obj):
        return pretty_json(obj.form_data)

    @admin.display(description="metadata")
    def metadata_pretty(self, obj):
        return pretty_json(obj.metadata)


@admin.register(Submission)
class SubmissionAdmin(ReadOnlyAdmin):
    list_display = ("id", "tenant", "session", "created_at")
    list_filter = ("tenant", ("created_at", admin.DateFieldListFilter))
    list_select_related = ("tenant", "session")
    search_fields = ("=id", "=session__id", "session__email")
    date_hierarchy = "created_at"
    show_full_result_count = False
    fields = (
        "id",
        "tenant",
        "session",
        "answers_pretty",
        "result_pretty",
        "metadata",
        "request_hash",
        "created_at",
    )
    readonly_fields = fields

    @admin.display(description="answers")
    def answers_pretty(self, obj):
        return pretty_json(obj.answers)

    @admin.display(description="result")
    def result_pretty(self, obj):
        return pretty_json(obj.result)


class EventNameFilter(RecentValuesFilter):
    title = "name"
    parameter_name = "name"


@admin.register(AnalyticsEvent)
class AnalyticsEventAdmin(HistoryAdminMixin, ReadOnlyAdmin):
    """Millions of rows: newest first by id (the primary key), no COUNT(*); search by an exact
    session id (indexed). messageId is unique only per tenant: pick the tenant first."""

    list_display = ("name", "tenant", "session_id", "occurred_at", "created_at")
    list_filter = (EventNameFilter, "tenant")
    list_select_related = ("tenant",)
    ordering = ("-id",)
    search_fields = ("=session_id",)
    search_help_text = "A session id (exact)."
    fields = ("message_id", "tenant", "name", "session_id", "properties", "occurred_at")
    readonly_fields = fields

    def get_search_results(self, request, queryset, search_term):
        return exact_uuid_search(queryset, search_term, "session_id")

    def changelist_view(self, request, extra_context=None):
        # Best-effort storage failures leave no rows: surface the counter here.
        failures = metrics.events_store_failures()
        if failures["failures"]:
            last = failures["last"] or {}
            self.message_user(
                request,
                f"{failures['failures']} event batches could not be stored "
                f"({failures['lost_events']} events lost); last at {last.get('at')}: "
                f"{last.get('error')}",
                messages.ERROR,
            )
        return super().changelist_view(request, extra_context)
