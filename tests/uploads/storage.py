"""A real file-system storage that can be made to fail (or be slow) on demand.

The switches are files, so they work across threads (live_server) and processes alike.
"""

from __future__ import annotations

import time
from pathlib import Path

from django.core.files.storage import FileSystemStorage


class FlakyStorage(FileSystemStorage):
    def __init__(self, *args, fail_flag: str | None = None, slow_flag: str | None = None,
                 **kwargs):  # fmt: skip
        super().__init__(*args, **kwargs)
        # Without explicit flags (a child process configured by UPLOADS_STORAGE_BACKEND), the
        # switches sit next to the storage folder, where StorageSwitch puts them.
        root = Path(self.location).parent
        self.fail_flag = Path(fail_flag) if fail_flag else root / "fail.flag"
        self.slow_flag = Path(slow_flag) if slow_flag else root / "slow.flag"

    def _save(self, name, content):
        if self.slow_flag.exists():
            time.sleep(float(self.slow_flag.read_text() or 0.05))
        if self.fail_flag.exists():
            raise OSError(self.fail_flag.read_text() or "storage unreachable (test switch)")
        return super()._save(name, content)


class StorageSwitch:
    def __init__(self, root: Path):
        self.root = root
        self.fail_flag = root / "fail.flag"
        self.slow_flag = root / "slow.flag"

    def fail(self, message: str = "storage unreachable (test switch)"):
        self.fail_flag.write_text(message)

    def recover(self):
        self.fail_flag.unlink(missing_ok=True)

    def slow(self, seconds: float):
        self.slow_flag.write_text(str(seconds))

    def files(self) -> list[Path]:
        location = self.root / "attachments"
        return sorted(p for p in location.rglob("*") if p.is_file()) if location.exists() else []
