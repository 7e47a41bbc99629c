"""`make run`: migrate, set up the demo, then run web, realtime, the django-q2 cluster and the
outbox worker in the foreground, each line of theirs prefixed with its name. The banner comes
last, once the servers answer. Ctrl-C (or SIGTERM) stops every process within 5 s; if one
dies, all stop.

The demo run allows exactly one private address for outbox targets — this server's own
loopback address, where the webhook inspector listens — and only in the processes it starts.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from django.conf import settings
from django.core.management import call_command

from core.commands import StoppableCommand
from ops.management.commands.atlas_demo import banner

# SIGTERM first; whatever still runs after this is killed, so Ctrl-C is done within 5 s
STOP_GRACE_SECONDS = 2.0
READY_TIMEOUT_SECONDS = 60
INBOX_NETWORK = "127.0.0.1/32"


class Command(StoppableCommand):
    help = "Start everything for local use (web on 127.0.0.1:8000, realtime, cluster, worker)."
    stop_message = "stopping every process…"

    def add_arguments(self, parser):
        parser.add_argument("--port", default=os.environ.get("ATLAS_PORT", "8000"))
        parser.add_argument(
            "--verbose", action="store_true", help="Every log line of every process (INFO)."
        )

    def handle(self, *args, port, verbose=False, **options):
        port = int(port)
        self.stdout.write("migrating the database…")
        call_command("migrate", interactive=False, verbosity=0)
        env = self._demo_environment(verbose)
        call_command("atlas_demo", quiet=True, inbox_url=f"http://127.0.0.1:{port}/demo/inbox")

        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        realtime_port = settings.OUTBOX_REALTIME_PORT
        processes = {
            "web": manage + ["runserver", f"127.0.0.1:{port}", "--noreload", "--insecure"],
            "realtime": [sys.executable, "-m", "uvicorn", "config.asgi:application"]
            + ["--host", "127.0.0.1", "--port", str(realtime_port)]
            + ["--log-level", "info" if verbose else "warning"],
            "worker": manage + ["outbox_worker"],
            "cluster": manage + ["qcluster"],
        }
        children = {}
        for name, cmd in processes.items():
            # own process group: Ctrl-C reaches only us, and we stop each group as a whole
            children[name] = subprocess.Popen(
                cmd,
                start_new_session=True,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
            threading.Thread(target=self._relay, args=(name, children[name]), daemon=True).start()
        self.stdout.write(
            "starting " + ", ".join(f"{n} (pid {p.pid})" for n, p in children.items())
        )

        # Ctrl-C stops everything like SIGTERM does (StoppableCommand handles SIGTERM).
        signal.signal(signal.SIGINT, self._on_sigterm)
        exit_code = self._supervise(children, ready_ports=(port, realtime_port))
        self._stop_all(children)
        if sys.argv[1:2] == ["atlas_run"]:  # run as `manage.py atlas_run`, not call_command
            # Every child is gone and nothing is left to clean up; tearing down the
            # interpreter of a Django process took 1.4 s here, a third of the 5 s Ctrl-C budget.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exit_code)
        if exit_code:
            sys.exit(exit_code)

    def _demo_environment(self, verbose: bool) -> dict[str, str]:
        allowed = list(settings.OUTBOX_ALLOWED_TARGET_NETWORKS or [])
        if INBOX_NETWORK not in allowed:
            allowed.append(INBOX_NETWORK)
        settings.OUTBOX_ALLOWED_TARGET_NETWORKS = allowed  # for the inbox target's URL check
        env = {
            **os.environ,
            "OUTBOX_ALLOWED_TARGET_NETWORKS": ",".join(allowed),
            "ATLAS_DEMO_MODE": "true",
            "PYTHONUNBUFFERED": "1",  # lines reach the prefixes as they are written
        }
        if not verbose:
            env.setdefault("LOG_LEVEL", "WARNING")
            env.setdefault("ACCESS_LOG_LEVEL", "WARNING")  # no line per request; 4xx/5xx stay
        return env

    def _relay(self, name: str, proc: subprocess.Popen):
        prefix = f"{name:>8} │ "
        for line in proc.stdout:
            self.stdout.write(prefix + line.rstrip("\n"))

    def _supervise(self, children, ready_ports) -> int:
        """Until a stop is asked or a process dies; the banner once the servers answer."""
        started = time.monotonic()
        banner_due = True
        while not self.stop_requested:
            for name, proc in children.items():
                if proc.poll() is not None:
                    self.stderr.write(f"{name} exited with {proc.returncode}; stopping the rest")
                    self.stop_requested = True
                    return proc.returncode or 1
            if banner_due and (
                all(_listening(p) for p in ready_ports)
                or time.monotonic() - started > READY_TIMEOUT_SECONDS
            ):
                banner_due = False
                self.stdout.write(banner(_demo_credentials()))
            time.sleep(0.2)
        return 0

    def _stop_all(self, children):
        asked = time.monotonic()
        for proc in children.values():
            if proc.poll() is None:
                # the leader only: qcluster stops its own processes in order (under a
                # group-wide SIGTERM its sentinel waits for children that are already gone)
                with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for name, proc in children.items():
            try:
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} still running after {STOP_GRACE_SECONDS}s: killed")
            with contextlib.suppress(ProcessLookupError):  # whatever is left of its group
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        took = time.monotonic() - asked
        self.stdout.write(
            f"all stopped in {took:.1f} s (the embedded PostgreSQL keeps running: make stop-db)"
        )


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def _demo_credentials() -> dict:
    return json.loads((settings.VAR_DIR / "demo-credentials.json").read_text())
