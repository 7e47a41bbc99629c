"""A raw tus 1.0 client (http.client, one keep-alive connection per client) and the official
Node tus server (`@tus/server` + `@tus/file-store`), so the uploads bench can drive Atlas and
Node with the very same bytes on the wire.

The Node server is installed with npm into a temporary folder; `node_tus_server()` returns None
(and says why) when node or npm is missing or the install fails: the bench then runs Atlas alone.
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

NODE_SERVER_JS = """
import { Server } from '@tus/server'
import { FileStore } from '@tus/file-store'

const [port, directory] = process.argv.slice(2)
const server = new Server({ path: '/files', datastore: new FileStore({ directory }) })
server.listen({ host: '127.0.0.1', port: Number(port) }, () => console.log('ready'))
"""


class TusRawClient:
    """creation + PATCHes over one persistent connection; raises on any unexpected status."""

    def __init__(self, base_url: str, create_path: str, headers: dict[str, str]):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.create_path = create_path
        self.headers = {"Tus-Resumable": "1.0.0", **headers}
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=300)

    def close(self) -> None:
        self.conn.close()

    def _send(self, method: str, path: str, body=None, headers=None) -> http.client.HTTPResponse:
        self.conn.request(method, path, body=body, headers={**self.headers, **(headers or {})})
        response = self.conn.getresponse()
        response.read()
        return response

    def create(self, length: int, filename: str = "bench.bin") -> str:
        import base64

        name = base64.b64encode(filename.encode()).decode()
        kind = base64.b64encode(b"application/octet-stream").decode()
        response = self._send(
            "POST",
            self.create_path,
            headers={
                "Upload-Length": str(length),
                "Upload-Metadata": f"filename {name},filetype {kind}",
                "Content-Length": "0",
            },
        )
        if response.status != 201:
            raise RuntimeError(f"creation answered {response.status}")
        return urlsplit(response.getheader("Location")).path

    def patch(self, path: str, offset: int, body) -> int:
        response = self._send(
            "PATCH",
            path,
            body=body,
            headers={
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(len(body)),
            },
        )
        if response.status != 204:
            raise RuntimeError(f"PATCH at {offset} answered {response.status}")
        return int(response.getheader("Upload-Offset"))

    def upload(self, data: bytes, chunk: int | None = None, patch_times=None) -> str:
        """One whole upload: creation, then PATCHes of `chunk` bytes (one PATCH if None)."""
        path = self.create(len(data))
        view = memoryview(data)
        offset = 0
        step = chunk or len(data)
        while offset < len(data):
            started = time.perf_counter()
            offset = self.patch(path, offset, view[offset : offset + step])
            if patch_times is not None:
                patch_times.append(time.perf_counter() - started)
        return path.rstrip("/").rsplit("/", 1)[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Node tus server exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("the Node tus server did not start")


@contextmanager
def node_tus_server(work: Path, port: int):
    """Yields the Node server's base URL, or None when it cannot run here (reason printed)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        print("Node tus server: node/npm not found; Atlas runs alone (no ratios)", flush=True)
        yield None
        return
    folder = work / "node-tus"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"Node tus server: npm install @tus/server @tus/file-store into {folder} …", flush=True)
    installed = subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(folder),
            "--no-audit",
            "--no-fund",
            "--silent",
            "@tus/server",
            "@tus/file-store",
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    if installed.returncode != 0:
        print(f"Node tus server: npm install failed; Atlas runs alone\n{installed.stderr[-800:]}")
        yield None
        return
    script = folder / "server.mjs"
    script.write_text(NODE_SERVER_JS)
    (work / "node-files").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [node, str(script), str(port), str(work / "node-files")],
        cwd=folder,
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def node_versions(work: Path) -> dict[str, str]:
    import json

    found = {}
    for name in ("server", "file-store"):
        manifest = work / "node-tus" / "node_modules" / "@tus" / name / "package.json"
        if manifest.exists():
            found[f"@tus/{name}"] = json.loads(manifest.read_text())["version"]
    return found
