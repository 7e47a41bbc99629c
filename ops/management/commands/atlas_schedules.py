"""Create/update every declared django-q2 schedule (also done after migrate); --list prints
them with their next run."""

from django.core.management.base import BaseCommand

from ops.schedules import declared_schedules, sync_schedules


class Command(BaseCommand):
    help = "Create or update the django-q2 schedules declared by each app."

    def add_arguments(self, parser):
        parser.add_argument("--list", action="store_true", help="print schedules, change nothing")

    def handle(self, *args, list=False, **options):  # noqa: A002 - the flag is --list
        from django_q.models import Schedule

        if not list:
            for name, created in sync_schedules():
                self.stdout.write(f"{'created' if created else 'updated'} {name}")
        specs = {spec.name: spec for spec in declared_schedules()}
        rows = Schedule.objects.filter(name__in=specs).order_by("name")
        self.stdout.write(f"{'NAME':<32} {'EVERY':>8}  {'NEXT RUN':<25} WHY")
        for row in rows:
            spec = specs[row.name]
            next_run = row.next_run.isoformat(timespec="seconds") if row.next_run else "-"
            self.stdout.write(f"{row.name:<32} {spec.minutes:>6}m  {next_run:<25} {spec.why}")
        missing = set(specs) - {row.name for row in rows}
        for name in sorted(missing):
            self.stdout.write(f"{name:<32} (not created yet: run without --list or migrate)")
        # sync never deletes: a renamed or removed schedule stays until someone decides
        for row in Schedule.objects.exclude(name__in=specs).order_by("name", "pk"):
            self.stdout.write(f"{row.name or '-':<32} (in the database, not declared in code)")
        self.stdout.write(f"{len(specs)} schedule(s) declared")
