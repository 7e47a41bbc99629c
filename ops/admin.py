"""Third-party admin pages (django-q2's tasks, django-axes' login attempts) under the one rule
every console action follows: it declares the permission it needs and leaves a LogEntry.
Stock django-q2 lets anyone who may *view* the task lists resubmit a task (run its function
again); stock axes lets a viewer delete expired login attempts."""

from __future__ import annotations

from axes.admin import AccessAttemptAdmin
from axes.models import AccessAttempt
from django.contrib import admin
from django.core import checks
from django.db import transaction
from django_q.admin import FailAdmin, TaskAdmin, resubmit_task
from django_q.models import Failure, Success

from core.admin import check_actions_declare_permissions, log_admin_action


@admin.action(description="Resubmit selected tasks to queue", permissions=["resubmit"])
def resubmit_logged(modeladmin, request, queryset):
    tasks = list(queryset)
    with transaction.atomic():
        # logged first: a failure's row is deleted once resubmitted
        log_admin_action(request, tasks, action="resubmit_task", selected=len(tasks),
                         changed=len(tasks))  # fmt: skip
        resubmit_task(modeladmin, request, tasks)


class _ResubmitNeedsChange:
    actions = [resubmit_logged]

    def has_resubmit_permission(self, request) -> bool:
        # a failure's row is deleted when resubmitted: that needs the delete permission too
        deletes = isinstance(self, FailAdmin)
        return self.has_change_permission(request) and (
            not deletes or self.has_delete_permission(request)
        )


class GuardedTaskAdmin(_ResubmitNeedsChange, TaskAdmin):
    pass


class GuardedFailAdmin(_ResubmitNeedsChange, FailAdmin):
    pass


class GuardedAccessAttemptAdmin(AccessAttemptAdmin):
    @admin.action(description="Clean up expired attempts", permissions=["delete"])
    def cleanup_expired_attempts(self, request, queryset):
        rows = list(queryset)
        with transaction.atomic():
            count = self.handler.clean_expired_user_attempts(request=request)
            log_admin_action(request, rows, action="cleanup_expired_attempts",
                             selected=len(rows), changed=count,
                             detail="Expired attempts (of every user) were removed.")  # fmt: skip
        self.message_user(request, f"Cleaned up {count} expired access attempts.")


# The console's own name on every page (the browser tab, the header, the index).
admin.site.site_header = "Atlas operations console"
admin.site.site_title = "Atlas console"
admin.site.index_title = "Operations"
# lists get the whole width of a 1,280 px screen (the breadcrumbs and the index still lead
# everywhere; the sidebar took a fifth of the screen on every page)
admin.site.enable_nav_sidebar = False

for _model, _admin_class in (
    (Success, GuardedTaskAdmin),
    (Failure, GuardedFailAdmin),
    (AccessAttempt, GuardedAccessAttemptAdmin),
):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)
    admin.site.register(_model, _admin_class)


# `manage.py check` (and start-up) refuses an action that anyone who may view could run.
checks.register(check_actions_declare_permissions, checks.Tags.admin)
