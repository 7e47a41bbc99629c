"""`make run`: migrate, set up the demo, then run web, django-q2 cluster and outbox worker in
the foreground. Ctrl-C (or SIGTERM) stops all of them cleanly; if one dies, all stop."""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command, get_commands

from core.commands import StoppableCommand

STOP_GRACE_SECONDS = 20


class Command(StoppableCommand):
    help = "Start everything for local use (web on 127.0.0.1:8000, cluster, outbox worker)."
    stop_message = "signal received: stopping every process"

    def add_arguments(self, parser):
        parser.add_argument("--port", default=os.environ.get("ATLAS_PORT", "8000"))

    def handle(self, *args, port, **options):
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("database migrated")
        call_command("atlas_demo")

        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        processes = {
            "web": manage + ["runserver", f"127.0.0.1:{port}", "--noreload", "--insecure"],
            "cluster": manage + ["qcluster"],
        }
        if "outbox_worker" in get_commands():
            processes["outbox-worker"] = manage + ["outbox_worker"]
            # SSE streams are long-lived: an ASGI server holds them as coroutines, not threads
            processes["realtime"] = [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(settings.OUTBOX_REALTIME_PORT),
            ]

        children = {}
        for name, cmd in processes.items():
            # own process group: Ctrl-C reaches only us, and we stop children in order
            children[name] = subprocess.Popen(cmd, start_new_session=True)
            self.stdout.write(f"started {name} (pid {children[name].pid})")

        # Ctrl-C stops everything like SIGTERM does (StoppableCommand handles SIGTERM).
        signal.signal(signal.SIGINT, self._on_sigterm)

        exit_code = 0
        while not self.stop_requested:
            for name, proc in children.items():
                if proc.poll() is not None:
                    self.stderr.write(f"{name} exited with {proc.returncode}; stopping the rest")
                    exit_code = proc.returncode or 1
                    self.stop_requested = True
                    break
            time.sleep(0.3)

        self.stdout.write("stopping…")
        for proc in children.values():
            if proc.poll() is None:
                # the whole process group: qcluster's own worker processes must stop too
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for name, proc in children.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} did not stop in {STOP_GRACE_SECONDS}s; killing it")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.stdout.write("all stopped")
        if exit_code:
            sys.exit(exit_code)
