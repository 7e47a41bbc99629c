"""Upload throughput through tus, side by side with the official Node tus server, and the web
process's memory while it streams a big file.

    .venv/bin/python bench/uploads.py [--reps 3] [--big-mb 50] [--small-runs 5] [--big-runs 2]

Side by side: Atlas under gunicorn (2 workers × 4 threads, as in production, 127.0.0.1, a
throwaway database, throttles on) and `@tus/server` + `@tus/file-store` (one Node
process; npm installs it into a temporary folder when npm is present, otherwise Atlas runs
alone). The same raw tus client (http.client, keep-alive) drives both, alternating Atlas and
Node per scenario and repetition (who goes first swaps each repetition); the table shows the
median of the repetitions and the ratio Atlas/Node. Every Atlas upload is checked afterwards:
stored, its sha256 the bytes' real one, its upload.stored outbox event written.

Then, as before: the `tuspy` client (8 MiB PATCHes, Upload-Checksum sha1) and a multipart
POST against a plain file copy of the same bytes (the ceiling), with the workers' RSS sampled
every 5 ms during the big uploads; the peak growth must stay under 20 MB (bodies are streamed).
Prints tables and writes bench/results/uploads.json; exits 1 when a floor is missed.
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
from bench._tus_raw import TusRawClient, node_tus_server, node_versions  # noqa: E402

MB = 1024 * 1024


def _rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


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


FLOORS = {  # Atlas/Node, same run (docs/performance.md)
    "50 MB, one PATCH": 0.8,
    "50 MB, 5 MB PATCHes": None,
    "100 × 1 MB in sequence": 0.6,
    "8 clients × 10 MB": 0.8,
}
LAST_PATCH_FLOOR = 1.5  # the last PATCH of a 50 MB upload ≤ 1.5 × an ordinary 5 MB PATCH
MEMORY_LIMIT_MB = 20


class Workers:
    """RSS of every gunicorn worker, sampled every 5 ms while a function runs."""

    def __init__(self, master: int):
        self.master = master

    def pids(self) -> list[int]:
        return [int(p) for p in Path(f"/proc/{self.master}/task/{self.master}/children")
                .read_text().split()]  # fmt: skip

    def measure(self, fn, *args) -> tuple[object, dict]:
        pids = self.pids()
        baseline = {pid: _rss_kb(pid) for pid in pids}
        peak = dict(baseline)
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                for pid in pids:
                    peak[pid] = max(peak[pid], _rss_kb(pid))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = fn(*args)
        finally:
            stop.set()
            sampler.join()
        growth = max(peak[pid] - baseline[pid] for pid in pids) / 1024
        return result, {
            "rss_before_mb": round(max(baseline.values()) / 1024, 1),
            "rss_peak_mb": round(max(peak.values()) / 1024, 1),
            "peak_growth_mb": round(growth, 1),
            "limit_mb": MEMORY_LIMIT_MB,
            "ok": "yes" if growth < MEMORY_LIMIT_MB else "NO",
        }


def _start_gunicorn(port: int, env: dict, workers: int = 2, threads: int = 4):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "config.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            str(workers),
            "--threads",
            str(threads),
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
    deadline = time.monotonic() + 20
    while len(Workers(proc.pid).pids()) < workers and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc, base


def _scenarios(big: bytes, ten: bytes, one: bytes, sequential: int, clients: int):
    """name → (unit, run(make_client) → (value, upload ids, PATCH times of the 5 MB run))."""

    def one_patch(make):
        client = make()
        started = time.perf_counter()
        ids = [client.upload(big)]
        elapsed = time.perf_counter() - started
        client.close()
        return len(big) / MB / elapsed, ids, None

    def five_mb_patches(make):
        client = make()
        times: list[float] = []
        started = time.perf_counter()
        ids = [client.upload(big, chunk=5 * MB, patch_times=times)]
        elapsed = time.perf_counter() - started
        client.close()
        return len(big) / MB / elapsed, ids, times

    def in_sequence(make):
        client = make()
        started = time.perf_counter()
        ids = [client.upload(one) for _ in range(sequential)]
        elapsed = time.perf_counter() - started
        client.close()
        return sequential / elapsed, ids, None

    def concurrent(make):
        from concurrent.futures import ThreadPoolExecutor

        made = [make() for _ in range(clients)]
        barrier = threading.Barrier(clients)

        def run(client):
            barrier.wait()
            return client.upload(ten)

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            ids = list(pool.map(run, made))
        elapsed = time.perf_counter() - started
        for client in made:
            client.close()
        return clients * len(ten) / MB / elapsed, ids, None

    mb = len(big) // MB
    return {
        f"{mb} MB, one PATCH": ("MB/s", one_patch),
        f"{mb} MB, 5 MB PATCHes": ("MB/s", five_mb_patches),
        f"{sequential} × 1 MB in sequence": ("uploads/s", in_sequence),
        f"{clients} clients × 10 MB": ("MB/s", concurrent),
    }


def _check_stored(ids: list[str], data_by_id: dict[str, str]) -> None:
    """Every Atlas upload: stored, sha256 the bytes' real one, its outbox event written."""
    from outbox.models import OutboxEvent
    from uploads.models import Attachment

    rows = {str(a.pk): a for a in Attachment.objects.filter(pk__in=ids)}
    keys = set(
        OutboxEvent.objects.filter(
            idempotency_key__in=[f"upload.stored:{pk}" for pk in ids]
        ).values_list("idempotency_key", flat=True)
    )
    for pk in ids:
        row = rows.get(pk)
        if row is None or row.status != "stored":
            raise RuntimeError(f"upload {pk} ended {row.status if row else 'missing'}")
        if row.sha256 != data_by_id[pk]:
            raise RuntimeError(f"upload {pk}: sha256 {row.sha256} is not the bytes' own")
        if f"upload.stored:{pk}" not in keys:
            raise RuntimeError(f"upload {pk}: no upload.stored event")


STOCK = "Atlas, stock gunicorn body reads"


def side_by_side(
    args, atlas_base: str, key: str, workers: Workers, node_base: str | None, stock_base=None
):
    import hashlib
    import statistics

    big = os.urandom(args.big_mb * MB)
    ten = os.urandom(10 * MB)
    one = os.urandom(1 * MB)
    digest = {len(d): hashlib.sha256(d).hexdigest() for d in (big, ten, one)}
    scenarios = _scenarios(big, ten, one, args.sequential, args.clients)
    sizes = {name: len(big) if i < 2 else len(one) if i == 2 else len(ten)
             for i, name in enumerate(scenarios)}  # fmt: skip

    def atlas_client(base):
        return lambda: TusRawClient(base, "/api/uploads/tus/", {"Authorization": f"Bearer {key}"})

    def make_node():
        return TusRawClient(node_base, "/files", {})  # type: ignore[arg-type]

    servers = {"Atlas": atlas_client(atlas_base)}
    if stock_base:
        servers[STOCK] = atlas_client(stock_base)
    if node_base:
        servers["Node"] = make_node
    print("warming up both servers (a few 1 MB uploads) …", flush=True)
    for make in servers.values():
        client = make()
        for _ in range(5):
            client.upload(one)
        client.close()

    values: dict[tuple[str, str], list[float]] = {}
    last_patch_ratios: list[float] = []
    memory: dict | None = None
    for rep in range(args.reps):
        order = list(servers)[rep % len(servers) :] + list(servers)[: rep % len(servers)]
        for name, (_unit, run) in scenarios.items():
            for server in order:
                print(f"  rep {rep + 1}/{args.reps}: {name} — {server} …", flush=True)
                if server == "Atlas" and memory is None and name.endswith("one PATCH"):
                    (value, ids, times), memory = workers.measure(run, servers[server])
                else:
                    value, ids, times = run(servers[server])
                values.setdefault((name, server), []).append(value)
                if server != "Node":
                    _check_stored(ids, {pk: digest[sizes[name]] for pk in ids})
                if server == "Atlas" and times:
                    last_patch_ratios.append(times[-1] / statistics.median(times[:-1]))
    rows = []
    for name, (unit, _run) in scenarios.items():
        atlas = statistics.median(values[(name, "Atlas")])
        node = statistics.median(values[(name, "Node")]) if node_base else None
        ratio = atlas / node if node else None
        stock = statistics.median(values[(name, STOCK)]) if stock_base else None
        floor = FLOORS[list(FLOORS)[list(scenarios).index(name)]]
        rows.append({
            "scenario": name,
            "unit": unit,
            "Atlas": round(atlas, 1),
            "Node tus": round(node, 1) if node else "-",
            "Atlas/Node": round(ratio, 2) if ratio else "-",
            "stock body reads": round(stock, 1) if stock else "-",
            "stock/Node": round(stock / node, 2) if stock and node else "-",
            "ratios per rep": " ".join(
                f"{a / n:.2f}" for a, n in zip(values[(name, "Atlas")],
                                               values.get((name, "Node"), []),
                                               strict=False)),  # fmt: skip
            "floor": floor or "-",
            "ok": "-" if not (floor and ratio) else "yes" if ratio >= floor else "NO",
        })  # fmt: skip
    last_patch = statistics.median(last_patch_ratios)
    return rows, {
        "values": {f"{n} | {s}": v for (n, s), v in values.items()},
        "last_patch_over_median_patch": last_patch_ratios,
        "last_patch_ratio": round(last_patch, 2),
        "last_patch_ok": "yes" if last_patch <= LAST_PATCH_FLOOR else "NO",
        "memory_one_patch": memory,
    }


def classic(args, base: str, key: str, workers: Workers, work: Path):
    """The tuspy client and multipart POST next to a plain file copy (as before)."""
    import requests
    from tusclient import client as tus_client

    from uploads.models import Attachment

    tus = tus_client.TusClient(f"{base}/api/uploads/tus/",
                               headers={"Authorization": f"Bearer {key}"})  # fmt: skip

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
        status = Attachment.objects.get(pk=uploader.url.rsplit("/", 1)[1]).status
        if status != "stored":
            raise RuntimeError(f"upload ended {status}")
        return elapsed

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

    rows, results, memory_rows = [], {}, []
    small, big = os.urandom(1 * MB), os.urandom(args.big_mb * MB)
    for label, data, runs in [("1 MB", small, args.small_runs),
                              (f"{args.big_mb} MB", big, args.big_runs)]:  # fmt: skip
        tus_times, multipart_times = [], []
        for run in range(runs):
            print(f"  {label}: run {run + 1}/{runs} (tuspy, multipart) …", flush=True)
            if data is big and run == 0:
                elapsed, mem = workers.measure(upload, data)
                memory_rows.append({"upload": f"tus {label}", **mem})
                tus_times.append(elapsed)
                elapsed, mem = workers.measure(multipart, data)
                memory_rows.append({"upload": f"multipart {label}", **mem})
                multipart_times.append(elapsed)
            else:
                tus_times.append(upload(data))
                multipart_times.append(multipart(data))
        copy_times = [_copy_rate(data, work, fsync=False) for _ in range(runs)]
        sync_times = [_copy_rate(data, work, fsync=True) for _ in range(runs)]
        best = {
            "tus, tuspy (end to end, stored + verified)": min(tus_times),
            "multipart POST (end to end, stored + verified)": min(multipart_times),
            "file copy (page cache)": min(copy_times),
            "file copy + fsync": min(sync_times),
        }
        for mode, seconds in best.items():
            rows.append({"size": label, "mode": mode, "runs": runs,
                         "best_s": round(seconds, 4),
                         "MB/s": round(len(data) / MB / seconds, 1)})  # fmt: skip
        results[label] = {"tus_seconds": tus_times, "multipart_seconds": multipart_times,
                          "copy_seconds": copy_times, "copy_fsync_seconds": sync_times}  # fmt: skip
    return rows, results, memory_rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--big-mb", type=int, default=50)
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--small-runs", type=int, default=5)
    parser.add_argument("--big-runs", type=int, default=2)
    parser.add_argument("--no-classic", action="store_true", help="Side by side only.")
    parser.add_argument(
        "--no-stock", action="store_true", help="Skip Atlas with gunicorn's own body reading."
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="atlas-bench-uploads-"))
    old_name = setup_django("uploads")
    gunicorn = stock = stock_base = None
    load_before = os.getloadavg()
    try:
        from django.db import transaction

        from tests.factories import TenantFactory, make_api_key

        with transaction.atomic():
            tenant = TenantFactory(name="Bench uploads")
        key = make_api_key(tenant, "secret")
        env = dict(os.environ)
        env.update(
            DATABASE_URL=database_url(),
            THROTTLE_ENABLED="true",  # as in production: the key's budget is counted
            UPLOADS_STAGING_DIR=str(work / "staging"),
            UPLOADS_STORAGE_DIR=str(work / "attachments"),
            UPLOADS_MAX_BYTES=str(max(200, args.big_mb * 2) * MB),
            UPLOADS_TENANT_MAX_OPEN="1000",
            CACHE_DIR=str(work / "cache"),
            LOG_LEVEL="WARNING",
        )
        port = free_port()
        print(f"starting gunicorn on 127.0.0.1:{port} (2 workers × 4 threads) …", flush=True)
        gunicorn, base = _start_gunicorn(port, env)
        workers = Workers(gunicorn.pid)
        if not args.no_stock:
            print("starting a second gunicorn with gunicorn's own body reading …", flush=True)
            stock, stock_base = _start_gunicorn(
                free_port(), {**env, "ATLAS_GUNICORN_STOCK_BODY": "true"}
            )
        try:
            with node_tus_server(work, free_port()) as node_base:
                rows, side = side_by_side(args, base, key, workers, node_base, stock_base)
        finally:
            if stock is not None:
                stock.terminate()
                stock.wait(10)
        report = {
            "note": "gunicorn 2 workers × 4 threads and one Node process on 127.0.0.1; shared "
            "2-core machine: compare the ratios, not the absolutes",
            "node": node_versions(work) if node_base else "not available: Atlas alone",
            "side_by_side": rows,
            **side,
        }
        print_table(f"tus side by side, median of {args.reps} (raw client, alternating)", rows)
        print(f"\nlast PATCH of a {args.big_mb} MB upload / median 5 MB PATCH: "
              f"{side['last_patch_ratio']} (≤ {LAST_PATCH_FLOOR}: "
              f"{side['last_patch_ok']})")  # fmt: skip
        memory_rows = [{"upload": f"raw tus {args.big_mb} MB, one PATCH",
                        **(side["memory_one_patch"] or {})}]  # fmt: skip
        if not args.no_classic:
            classic_rows, raw, more_memory = classic(args, base, key, workers, work)
            memory_rows += more_memory
            print_table("Upload throughput, tuspy and multipart (best of N; MB = MiB)",
                        classic_rows)  # fmt: skip
            report.update(throughput=classic_rows, raw=raw)
        print_table(f"Web worker memory during the {args.big_mb} MB uploads", memory_rows)
        load_after = os.getloadavg()
        print(f"load average: {load_before[0]:.2f} before, {load_after[0]:.2f} after")
        load = {"before": load_before, "after": load_after}
        write_report("uploads", {**report, "memory": memory_rows, "load_average": load})
        failed = [r["scenario"] for r in rows if r["ok"] == "NO"]
        if side["last_patch_ok"] != "yes":
            failed.append("last PATCH")
        if any(row.get("ok") != "yes" for row in memory_rows):
            failed.append("memory")
        if failed:
            print("FAIL: floors missed: " + ", ".join(failed))
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
