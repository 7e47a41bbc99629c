// Atlas uploads: a small tus 1.0 client with an offline queue (ES module, no build step).
//
//   import { AtlasUploads } from "/static/atlas/uploads.js";
//   const uploads = new AtlasUploads({ apiKey: "pk_…" });
//   uploads.start();                       // flush the queue now and whenever we come online
//   const { id } = await uploads.upload(file, { assessmentSessionId, sessionToken });
//   (a publishable key links a file to a session only with that session's token, the
//   sessionToken returned when it was created: AtlasClient keeps it as client.sessionToken)
//
// Every file is first written to IndexedDB (the Blob itself plus its upload state) under a
// client-generated uploadId, so a file picked while offline, or a tab closed mid-upload, is
// not lost: when the browser is back online the queue is flushed through tus (resuming from
// the server's offset), then POST /api/uploads/retry tells the server to retry finalising
// anything it still holds. The uploadId makes every re-send the same attachment.

const TUS = "1.0.0";
const DEFAULT_CHUNK = 5 * 1024 * 1024;
const HASH_LIMIT = 64 * 1024 * 1024; // whole-file SHA-256 (needs the file in memory) below this

function b64(text) {
  return btoa(String.fromCharCode(...new TextEncoder().encode(text)));
}

function metadataHeader(values) {
  return Object.entries(values)
    .filter(([, value]) => value !== undefined && value !== null && value !== "")
    .map(([key, value]) => `${key} ${b64(String(value))}`)
    .join(",");
}

async function sha256Hex(blob) {
  if (!globalThis.crypto?.subtle || blob.size > HASH_LIMIT) return "";
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function newId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// The server refused the file itself (too large, type not allowed, bad metadata): retrying
// cannot help, so it leaves the queue with a `rejected` event carrying the error code.
class Rejected extends Error {
  constructor(code, status) {
    super(`upload rejected: ${code}`);
    this.code = code;
    this.status = status;
  }
}

const RETRYABLE = new Set([404, 408, 409, 410, 423, 425, 429, 460]);

class Queue {
  constructor(name) {
    this.name = name;
    this._db = null;
  }

  open() {
    if (this._db) return this._db;
    this._db = new Promise((resolve, reject) => {
      const request = indexedDB.open(this.name, 1);
      request.onupgradeneeded = () => request.result.createObjectStore("uploads", { keyPath: "id" });
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
    return this._db;
  }

  async _tx(mode, work) {
    const db = await this.open();
    return new Promise((resolve, reject) => {
      const tx = db.transaction("uploads", mode);
      const result = work(tx.objectStore("uploads"));
      tx.oncomplete = () => resolve(result?.result ?? result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  put(record) {
    return this._tx("readwrite", (store) => store.put(record));
  }

  delete(id) {
    return this._tx("readwrite", (store) => store.delete(id));
  }

  all() {
    return this._tx("readonly", (store) => store.getAll());
  }
}

export class AtlasUploads extends EventTarget {
  constructor({ apiKey, baseUrl = "", chunkSize = DEFAULT_CHUNK, dbName = "atlas-uploads" } = {}) {
    super();
    if (!apiKey) throw new Error("AtlasUploads needs an apiKey (publishable key, pk_…)");
    this.apiKey = apiKey;
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.chunkSize = chunkSize;
    this.queue = new Queue(dbName);
    this._flushing = null;
    this._again = false;
    this._onOnline = () => this.flush();
  }

  start() {
    window.addEventListener("online", this._onOnline);
    if (navigator.onLine) this.flush();
    return this;
  }

  stop() {
    window.removeEventListener("online", this._onOnline);
  }

  /** Queue a file (kept in IndexedDB until the server has it), and send it if online. */
  async upload(file, { assessmentSessionId = null, sessionToken = null } = {}) {
    const record = {
      id: newId(),
      blob: file,
      name: file.name || "upload",
      type: file.type || "application/octet-stream",
      size: file.size,
      sha256: await sha256Hex(file),
      assessmentSessionId,
      sessionToken,
      url: null,
      offset: 0,
      queuedAt: Date.now(),
    };
    await this.queue.put(record);
    this._emit("queued", { id: record.id });
    if (navigator.onLine) this.flush();
    return { id: record.id, queued: true };
  }

  /** Files still waiting in IndexedDB. */
  async pending() {
    return (await this.queue.all()).map(({ id, name, size, offset }) => ({ id, name, size, offset }));
  }

  /** Send every queued file, then ask the server to retry what it holds. Never runs twice
   * at the same time: a flush asked for meanwhile (a file picked during one) runs again right
   * after it. Stops quietly at the first network error (still offline). */
  flush() {
    if (this._flushing) {
      this._again = true;
      return this._flushing;
    }
    this._flushing = (async () => {
      let result;
      do {
        this._again = false;
        result = await this._flush();
      } while (this._again && !result.offline);
      return result;
    })().finally(() => {
      this._flushing = null;
    });
    return this._flushing;
  }

  async _flush() {
    const records = await this.queue.all();
    let sent = 0;
    for (const record of records.sort((a, b) => a.queuedAt - b.queuedAt)) {
      try {
        const done = await this._send(record);
        if (done) {
          await this.queue.delete(record.id);
          sent += 1;
          this._emit("uploaded", { id: record.id });
        }
      } catch (error) {
        if (error instanceof Rejected) {
          await this.queue.delete(record.id);
          this._emit("rejected", { id: record.id, code: error.code, status: error.status });
          continue;
        }
        this._emit("error", { id: record.id, error: String(error) });
        if (error instanceof TypeError) return { sent, offline: true }; // network is gone
      }
    }
    let retry = null;
    try {
      retry = await this._request("POST", `${this.baseUrl}/api/uploads/retry`, { tus: false });
      retry = retry.ok ? await retry.json() : null;
    } catch (error) {
      if (!(error instanceof TypeError)) throw error;
    }
    this._emit("synced", { sent, retry });
    return { sent, retry };
  }

  _request(method, url, { headers = {}, body = null, tus = true } = {}) {
    const all = { Authorization: `Bearer ${this.apiKey}`, ...headers };
    if (tus) all["Tus-Resumable"] = TUS;
    return fetch(url, { method, headers: all, body, cache: "no-store" });
  }

  async _errorCode(response) {
    try {
      return (await response.json()).error?.code ?? `http_${response.status}`;
    } catch {
      return `http_${response.status}`;
    }
  }

  async _create(record) {
    const response = await this._request("POST", `${this.baseUrl}/api/uploads/tus/`, {
      headers: {
        ...(record.sessionToken ? { "X-Session-Token": record.sessionToken } : {}),
        "Upload-Length": String(record.size),
        "Upload-Metadata": metadataHeader({
          filename: record.name,
          filetype: record.type,
          uploadId: record.id,
          sha256: record.sha256,
          assessmentSessionId: record.assessmentSessionId,
        }),
      },
    });
    if (response.status === 409 && (await this._errorCode(response)) === "upload_exists") {
      return null; // the server finished this uploadId already
    }
    if (response.status !== 201) await this._fail(response);
    record.url = new URL(response.headers.get("Location"), location.href).toString();
    record.offset = Number(response.headers.get("Upload-Offset") || 0);
    await this.queue.put(record);
    return record.url;
  }

  async _fail(response) {
    const code = await this._errorCode(response);
    if (response.status >= 400 && response.status < 500 && !RETRYABLE.has(response.status)) {
      throw new Rejected(code, response.status);
    }
    throw new Error(`tus request failed: ${response.status} ${code}`);
  }

  async _offset(record) {
    const response = await this._request("HEAD", record.url);
    if (response.status === 404 || response.status === 410) return null;
    if (!response.ok) throw new Error(`tus HEAD failed: ${response.status}`);
    return Number(response.headers.get("Upload-Offset"));
  }

  /** true when the server has every byte (or had this uploadId complete already). */
  async _send(record, restarted = false) {
    if (record.url) {
      const offset = await this._offset(record);
      if (offset === null) record.url = null; // expired or terminated: start over
      else record.offset = offset;
    }
    if (!record.url && (await this._create(record)) === null) return true;
    while (record.offset < record.size) {
      const chunk = record.blob.slice(record.offset, record.offset + this.chunkSize);
      const response = await this._request("PATCH", record.url, {
        headers: {
          "Upload-Offset": String(record.offset),
          "Content-Type": "application/offset+octet-stream",
        },
        body: chunk,
      });
      if (response.status === 404 || response.status === 410) {
        // expired or removed on the server: start this file over once, same uploadId
        if (restarted) await this._fail(response);
        record.url = null;
        record.offset = 0;
        await this.queue.put(record);
        return this._send(record, true);
      }
      if (response.status === 409 || response.status === 423) {
        const offset = await this._offset(record);
        if (offset === null) throw new Error("upload vanished");
        record.offset = offset;
        continue;
      }
      if (response.status !== 204) await this._fail(response);
      record.offset = Number(response.headers.get("Upload-Offset"));
      await this.queue.put(record);
      this._emit("progress", { id: record.id, offset: record.offset, size: record.size });
    }
    return true;
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
