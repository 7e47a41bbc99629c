"""Uploads in the operations console: attachments (filters, retry, download), read-only retry
logs and attempts, health alerts, and the retry health page with a chart per day."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.files.storage import storages
from django.http import FileResponse, Http404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from core.admin import (
    AgeFilter,
    HistoryAdminMixin,
    NoAddMixin,
    NoDeleteMixin,
    ReadOnlyAdmin,
    ReadOnlyInline,
    RecentValuesFilter,
    exact_uuid_search,
    human_bytes,
    log_admin_action,
    permission_check,
)
from uploads import selectors, staging
from uploads.models import (
    Attachment,
    FinaliseAttempt,
    HealthAlert,
    RetryLog,
    RetrySource,
)
from uploads.services.retries import retry_run


class FinaliseAttemptInline(ReadOnlyInline):
    model = FinaliseAttempt
    show_change_link = False
    fields = ("created_at", "source", "succeeded", "error", "retry_log")
    readonly_fields = fields
    ordering = ("-created_at",)


class StagedBytesFilter(admin.SimpleListFilter):
    """Pending attachments waiting for staged bytes this host could not see."""

    title = "staged bytes"
    parameter_name = "staged_bytes"

    def lookups(self, request, model_admin):
        return [("missing", "missing (waiting for them)"), ("alerted", "missing and alerted")]

    def queryset(self, request, queryset):
        if self.value() == "missing":
            return queryset.filter(staged_missing_since__isnull=False)
        if self.value() == "alerted":
            return queryset.filter(missing_alerted_at__isnull=False)
        return queryset


class StagingHostFilter(RecentValuesFilter):
    """Hosts seen among recent attachments (no DISTINCT over the whole table)."""

    title = "staging host"
    parameter_name = "staging_host"


@admin.register(Attachment)
class AttachmentAdmin(HistoryAdminMixin, NoAddMixin, NoDeleteMixin, admin.ModelAdmin):
    """Staff may retry and download; never add or delete (deleting loses evidence, and
    maybe the only copy). Newest first (created_at index); search by exact id."""

    list_display = (
        "filename",
        "tenant",
        "status",
        "channel",
        "size_human",
        "attempts",
        "next_retry_at",
        "staging_host",
        "staged_missing_since",
        "short_error",
        "created_at",
        "download_link",
    )
    list_filter = (
        "status",
        "channel",
        StagedBytesFilter,
        "last_retry_source",
        StagingHostFilter,
        AgeFilter,
        "tenant",
    )
    list_select_related = ("tenant",)
    search_fields = ("=id",)
    search_help_text = "An attachment id (exact)."
    readonly_fields = [f.name for f in Attachment._meta.fields] + ["download_link"]
    inlines = [FinaliseAttemptInline]
    actions = ["retry_now"]

    has_retry_attachment_permission = permission_check("retry_attachment")

    @admin.display(description="size", ordering="size")
    def size_human(self, obj):
        return human_bytes(obj.size)

    def get_search_results(self, request, queryset, search_term):
        return exact_uuid_search(queryset, search_term, "id")

    @admin.display(description="last error")
    def short_error(self, obj):
        return (obj.last_error[:80] + "…") if len(obj.last_error) > 80 else obj.last_error

    @admin.display(description="file")
    def download_link(self, obj):
        if obj.status == Attachment.Status.RECEIVING:
            return "-"
        url = reverse("admin:uploads_attachment_download", args=[obj.pk])
        return format_html('<a href="{}">download</a>', url)

    @admin.action(
        description="Retry finalising now (manual retry run)", permissions=["retry_attachment"]
    )
    def retry_now(self, request, queryset):
        ids = list(
            queryset.filter(
                status__in=[Attachment.Status.PENDING, Attachment.Status.FAILED]
            ).values_list("pk", flat=True)
        )
        if not ids:
            self.message_user(request, "None of those is pending or failed.", messages.WARNING)
            return
        log = retry_run(source=RetrySource.MANUAL, attachment_ids=ids)
        log_admin_action(
            request,
            Attachment.objects.filter(pk__in=ids),
            action="retry_now",
            selected=len(ids),
            changed=log.attempted,
            detail=f"Retry run {log.pk}: {log.succeeded} stored, {log.failed} failed.",
        )
        level = messages.SUCCESS if not log.failed else messages.WARNING
        self.message_user(
            request,
            f"Retried {log.attempted}: {log.succeeded} stored, {log.failed} failed "
            f"({len(ids) - log.attempted} skipped: held by another run or attempted just now).",
            level,
        )

    def get_urls(self):
        extra = [
            path(
                "<uuid:attachment_id>/download/",
                self.admin_site.admin_view(self.download_view),
                name="uploads_attachment_download",
            )
        ]
        return extra + super().get_urls()

    def download_view(self, request, attachment_id):
        if not (request.user.is_staff and self.has_view_permission(request)):
            raise PermissionDenied
        attachment = Attachment.objects.filter(pk=attachment_id).first()
        if attachment is None:
            raise Http404("No such attachment")
        if attachment.status == Attachment.Status.STORED:
            handle = storages["attachments"].open(attachment.storage_name, "rb")
        else:
            path_ = staging.staging_path(
                tenant_id=attachment.tenant_id, attachment_id=attachment.pk
            )
            if not path_.exists():
                raise Http404("The staged bytes are gone")
            handle = path_.open("rb")
        return FileResponse(
            handle,
            as_attachment=True,
            filename=attachment.filename,
            content_type=attachment.content_type,
        )


@admin.register(RetryLog)
class RetryLogAdmin(ReadOnlyAdmin):
    list_display = (
        "started_at",
        "source",
        "tenant",
        "attempted",
        "succeeded",
        "failed",
        "finished_at",
        "error",
    )
    list_filter = ("source", "tenant")
    list_select_related = ("tenant",)
    list_per_page = 100
    show_full_result_count = False
    date_hierarchy = "started_at"
    change_list_template = "admin/uploads/retrylog/change_list.html"

    def get_urls(self):
        extra = [
            path(
                "health/",
                self.admin_site.admin_view(self.health_view),
                name="uploads_retrylog_health",
            )
        ]
        return extra + super().get_urls()

    def health_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            days = max(1, min(90, int(request.GET.get("days", 7))))
        except ValueError:
            days = 7
        daily = selectors.retry_health_daily(days=days)
        peak = max([d["attempted"] for d in daily] + [1])
        bar_width, gap, height = 36, 12, 160
        for index, day in enumerate(daily):
            day["x"] = index * (bar_width + gap) + 40
            day["ok_h"] = round(height * day["succeeded"] / peak)
            day["fail_h"] = round(height * day["failed"] / peak)
            day["ok_y"] = 10 + height - day["ok_h"]
            day["fail_y"] = day["ok_y"] - day["fail_h"]
        context = {
            **self.admin_site.each_context(request),
            "title": f"Upload retry health — last {days} days",
            "opts": self.model._meta,
            "days": days,
            "report": selectors.retry_health(days=days),
            "daily": daily,
            "chart": {
                "width": len(daily) * (bar_width + gap) + 60,
                "height": height + 40,
                "bar": bar_width,
                "base": 10 + height,
                "peak": peak,
            },
            "alerts": HealthAlert.objects.select_related("tenant")[:20],
            "missing": selectors.staged_bytes_missing(),
            "quotas": selectors.tenant_quota_usage(),
            "quota_bytes": settings.UPLOADS_TENANT_QUOTA_BYTES,
            "max_open_uploads": settings.UPLOADS_TENANT_MAX_OPEN,
        }
        return TemplateResponse(request, "admin/uploads/health.html", context)


@admin.register(FinaliseAttempt)
class FinaliseAttemptAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "tenant", "attachment", "source", "succeeded", "error")
    list_filter = ("succeeded", "source", "tenant")
    list_select_related = ("tenant", "attachment")
    list_per_page = 100
    show_full_result_count = False


@admin.register(HealthAlert)
class HealthAlertAdmin(ReadOnlyAdmin):
    list_display = ("hour", "tenant", "outcome", "reason", "attempted", "failed", "failure_rate")
    list_filter = ("outcome", "tenant")
    list_select_related = ("tenant",)
