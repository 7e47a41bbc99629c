"""Upload throughput through tus and the web process's memory while it streams a big file.

    .venv/bin/python bench/uploads.py [--big-mb 50] [--small-runs 5] [--big-runs 2]

A real gunicorn (1 sync worker, 127.0.0.1, a throwaway database, THROTTLE_ENABLED=false)
receives 1 MB and 50 MB files from the `tuspy` client (8 MiB PATCHes, Upload-Checksum sha1);
each upload is timed end to end, including finalisation into the attachments storage (copy +
read-back verification). Next to it: a plain file copy of the same bytes (the ceiling), with
and without fsync. The worker's RSS is sampled from /proc every 5 ms during the big upload;
the peak growth over its RSS just before must stay under 20 MB (the body is streamed).
Prints tables and writes bench/results/uploads.json.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    ROOT,
    database_url,
    free_port,
    print_table,
    setup_django,
    teardown_django,
    write_report,
)

MB = 1024 * 1024


def _rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def _worker_pid(master: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise RuntimeError("gunicorn worker did not start")


def _wait_http(url: str, timeout: float = 30):
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def _copy_rate(data: bytes, work: Path, fsync: bool) -> float:
    src, dst = work / "copy-src.bin", work / "copy-dst.bin"
    src.write_bytes(data)
    started = time.perf_counter()
    shutil.copyfile(src, dst)
    if fsync:
        with dst.open("rb+") as fh:
            os.fsync(fh.fileno())
    elapsed = time.perf_counter() - started
    dst.unlink()
    src.unlink()
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mb", type=int, default=50)
    parser.add_argument("--small-runs", type=int, default=5)
    parser.add_argument("--big-runs", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="atlas-bench-uploads-"))
    old_name = setup_django("uploads")
    gunicorn = None
    try:
        from django.db import transaction

        from tests.factories import TenantFactory, make_api_key
        from uploads.models import Attachment

        with transaction.atomic():
            tenant = TenantFactory(name="Bench uploads")
        key = make_api_key(tenant, "secret")

        port = free_port()
        env = dict(os.environ)
        env.update(
            DATABASE_URL=database_url(),
            THROTTLE_ENABLED="false",
            UPLOADS_STAGING_DIR=str(work / "staging"),
            UPLOADS_STORAGE_DIR=str(work / "attachments"),
            UPLOADS_MAX_BYTES=str(max(200, args.big_mb * 2) * MB),
            CACHE_DIR=str(work / "cache"),
            LOG_LEVEL="WARNING",
        )
        print(f"starting gunicorn on 127.0.0.1:{port} (1 sync worker) …", flush=True)
        gunicorn = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "config.wsgi",
                "-b",
                f"127.0.0.1:{port}",
                "-w",
                "1",
                "--timeout",
                "300",
                "--log-level",
                "warning",
            ],  # fmt: skip
            cwd=ROOT,
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        _wait_http(f"{base}/health")
        worker = _worker_pid(gunicorn.pid)

        from tusclient import client as tus_client

        tus = tus_client.TusClient(
            f"{base}/api/uploads/tus/", headers={"Authorization": f"Bearer {key}"}
        )

        def upload(data: bytes) -> float:
            uploader = tus.uploader(
                file_stream=io.BytesIO(data),
                chunk_size=8 * MB,
                upload_checksum=True,
                metadata={"filename": "bench.bin", "filetype": "application/octet-stream"},
            )
            started = time.perf_counter()
            uploader.upload()
            elapsed = time.perf_counter() - started
            attachment_id = uploader.url.rsplit("/", 1)[1]
            status = Attachment.objects.get(pk=attachment_id).status
            if status != "stored":
                raise RuntimeError(f"upload ended {status}")
            return elapsed

        rows, results = [], {}
        small = os.urandom(1 * MB)
        big = os.urandom(args.big_mb * MB)
        print("warming up (one 1 MB upload) …", flush=True)
        upload(small)

        import requests

        def multipart(data: bytes) -> float:
            started = time.perf_counter()
            response = requests.post(
                f"{base}/api/uploads/",
                headers={"Authorization": f"Bearer {key}"},
                files={"file": ("bench.bin", data, "application/octet-stream")},
            )
            elapsed = time.perf_counter() - started
            if response.status_code != 201 or response.json()["status"] != "stored":
                raise RuntimeError(f"multipart upload: {response.status_code} {response.text}")
            return elapsed

        def with_memory(fn, data: bytes) -> tuple[float, dict]:
            """Run one upload while sampling the worker's RSS every 5 ms."""
            baseline = _rss_kb(worker)
            hwm_before = _rss_kb(worker, "VmHWM")
            peak = [baseline]
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    peak[0] = max(peak[0], _rss_kb(worker))
                    time.sleep(0.005)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                elapsed = fn(data)
            finally:
                stop.set()
                sampler.join()
            hwm_after = _rss_kb(worker, "VmHWM")
            growth = round((peak[0] - baseline) / 1024, 1)
            return elapsed, {
                "rss_before_mb": round(baseline / 1024, 1),
                "rss_peak_mb": round(peak[0] / 1024, 1),
                "peak_growth_mb": growth,
                "vmhwm_growth_mb": round((hwm_after - hwm_before) / 1024, 1),
                "limit_mb": 20,
                "ok": "yes" if growth < 20 else "NO",
            }

        plan = [("1 MB", small, args.small_runs), (f"{args.big_mb} MB", big, args.big_runs)]
        memory_rows = []
        for label, data, runs in plan:
            tus_times, multipart_times = [], []
            for run in range(runs):
                print(f"  {label}: run {run + 1}/{runs} (tus, multipart) …", flush=True)
                if data is big and run == 0:
                    elapsed, mem = with_memory(upload, data)
                    memory_rows.append({"upload": f"tus {label}", **mem})
                    tus_times.append(elapsed)
                    elapsed, mem = with_memory(multipart, data)
                    memory_rows.append({"upload": f"multipart {label}", **mem})
                    multipart_times.append(elapsed)
                else:
                    tus_times.append(upload(data))
                    multipart_times.append(multipart(data))
            copy_times = [_copy_rate(data, work, fsync=False) for _ in range(runs)]
            sync_times = [_copy_rate(data, work, fsync=True) for _ in range(runs)]
            size_mb = len(data) / MB
            best = {
                "tus (end to end, stored + verified)": min(tus_times),
                "multipart POST (end to end, stored + verified)": min(multipart_times),
                "file copy (page cache)": min(copy_times),
                "file copy + fsync": min(sync_times),
            }
            for mode, seconds in best.items():
                rows.append(
                    {
                        "size": label,
                        "mode": mode,
                        "runs": runs,
                        "best_s": round(seconds, 4),
                        "MB/s": round(size_mb / seconds, 1),
                    }
                )
            results[label] = {
                "tus_seconds": tus_times,
                "multipart_seconds": multipart_times,
                "copy_seconds": copy_times,
                "copy_fsync_seconds": sync_times,
            }

        print_table("Upload throughput (best of N; MB = MiB)", rows)
        print_table(f"Web worker memory during the {args.big_mb} MB uploads", memory_rows)
        write_report(
            "uploads",
            {
                "note": "gunicorn 1 sync worker on 127.0.0.1; shared 2-core machine (other "
                "engineers' tests ran at the same time): compare rows, not absolutes",
                "throughput": rows,
                "raw": results,
                "memory": memory_rows,
            },
        )
        if any(row["ok"] != "yes" for row in memory_rows):
            print("FAIL: the web process grew by 20 MB or more")
            return 1
        return 0
    finally:
        if gunicorn is not None:
            gunicorn.terminate()
            try:
                gunicorn.wait(10)
            except subprocess.TimeoutExpired:
                gunicorn.kill()
        from django.db import connections

        connections.close_all()
        teardown_django(old_name)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
