"""django-q2's task pages, with the one rule every console action follows: it declares the
permission it needs and leaves a LogEntry. Stock django-q2 lets anyone who may *view* the
task lists resubmit a task (run its function again)."""

from __future__ import annotations

from django.contrib import admin
from django.db import transaction
from django_q.admin import FailAdmin, TaskAdmin, resubmit_task
from django_q.models import Failure, Success

from core.admin import log_admin_action


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


for _model, _admin_class in ((Success, GuardedTaskAdmin), (Failure, GuardedFailAdmin)):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)
    admin.site.register(_model, _admin_class)
