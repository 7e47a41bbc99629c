// Atlas assessment client: an ES module, no build step.
//
//   import { AtlasClient } from "/static/atlas/client.js";
//   const atlas = new AtlasClient({ publishableKey: "pk_…" });
//   atlas.start({ email });  atlas.answer("q1", "b");  atlas.track("hint_opened", {...});
//   const submission = await atlas.submit({ answers, result });
//
// Reliability rules (see README "Assessments"):
// - a submit attempt gets ONE submissionId (crypto.randomUUID()); retries reuse it, so the
//   server stores the submission once however many times the network fails;
// - analytics events are queued and flushed every 2 s or at 20 events, and on page hide by
//   navigator.sendBeacon; they are best-effort and never throw into the page;
// - session status is tracked: started → in_progress → completed, abandoned on page hide.

const DEFAULTS = {
  baseUrl: "",
  flushIntervalMs: 2000,
  batchSize: 20,
  maxQueue: 1000,
  submitRetries: 5,
  retryBaseMs: 400,
  retryMaxMs: 8000,
  beaconMaxBytes: 60000, // browsers refuse beacons over 64 KiB
};

function uuid() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Worth retrying: the network failed, the server failed, or it asked us to slow down.
const retryable = (status) => status === 0 || status === 408 || status === 429 || status >= 500;

export class AtlasError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code || (status === 0 ? "network_error" : "http_error");
    this.body = body;
  }
}

export class AtlasClient {
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options };
    if (!this.options.publishableKey) throw new Error("AtlasClient needs a publishableKey");
    this.sessionId = options.sessionId || uuid();
    this.status = null;
    this.queue = [];
    this.stats = { flushes: 0, beacons: 0, submitAttempts: 0, dropped: 0 };
    this._submission = null; // { id, key, promise } of the current attempt
    this._sessionReady = Promise.resolve();
    this._timer = null;
    this._onPageHide = () => this._pageHidden();
    this._onVisibility = () => document.visibilityState === "hidden" && this._beaconEvents();
    addEventListener("pagehide", this._onPageHide);
    document.addEventListener("visibilitychange", this._onVisibility);
  }

  destroy() {
    removeEventListener("pagehide", this._onPageHide);
    document.removeEventListener("visibilitychange", this._onVisibility);
    clearTimeout(this._timer);
  }

  // --- sessions ---------------------------------------------------------------------------

  start(fields = {}) {
    this.status = "started";
    this._sessionReady = this._postSession("started", fields);
    return this._sessionReady;
  }

  update(fields = {}) {
    return this._postSession(this.status || "started", fields);
  }

  async _postSession(status, fields = {}) {
    const body = { sessionId: this.sessionId, status, ...fields };
    const response = await this._request("POST", "/api/assessments/session", body, 3);
    if (response.ok) this.status = response.body.status;
    return response.body;
  }

  // Answers merge server-side with one atomic UPDATE; resend-safe (keyed by question id).
  async answer(questionId, answer) {
    await this._sessionReady.catch(() => {});
    if (this.status !== "completed") this.status = "in_progress";
    const path = `/api/assessments/session/${this.sessionId}/answers`;
    let response = await this._request("POST", path, { questionId, answer }, 3);
    if (response.status === 404) {
      // The session POST never arrived (offline at start): create it, then answer again.
      await this._postSession("in_progress").catch(() => {});
      response = await this._request("POST", path, { questionId, answer }, 3);
    }
    return response.body;
  }

  // --- submissions ------------------------------------------------------------------------

  // One submissionId per attempt: calling submit() again with the same payload (a double
  // click, a retry button) reuses it; another payload is a new attempt with a new id.
  submit(payload) {
    const key = JSON.stringify(payload);
    if (!this._submission || this._submission.key !== key) {
      this._submission = { id: uuid(), key, promise: null };
    }
    const attempt = this._submission;
    if (!attempt.promise || attempt.failed) {
      attempt.failed = null;
      attempt.promise = this._submitWithRetries(attempt, payload);
    }
    return attempt.promise;
  }

  async _submitWithRetries(attempt, payload) {
    const body = { ...payload, submissionId: attempt.id, sessionId: this.sessionId };
    const { submitRetries, retryBaseMs, retryMaxMs } = this.options;
    for (let n = 0; ; n++) {
      this.stats.submitAttempts++;
      const response = await this._request("POST", "/api/assessments/submit", body, 1);
      if (response.ok) {
        this.status = "completed";
        this.track("assessment_submitted", { submissionId: attempt.id });
        return response.body;
      }
      if (!retryable(response.status) || n >= submitRetries) {
        attempt.failed = response.status;
        throw new AtlasError(response.status, response.body);
      }
      const backoff = Math.min(retryMaxMs, retryBaseMs * 2 ** n);
      await sleep(backoff / 2 + Math.random() * (backoff / 2)); // jitter: no thundering herd
    }
  }

  // --- analytics events (best-effort) -----------------------------------------------------

  track(name, properties = {}) {
    const event = {
      messageId: uuid(),
      name,
      sessionId: this.sessionId,
      properties,
      timestamp: new Date().toISOString(),
    };
    this.queue.push(event);
    if (this.queue.length > this.options.maxQueue) {
      this.queue.splice(0, this.queue.length - this.options.maxQueue);
      this.stats.dropped++;
    }
    if (this.queue.length >= this.options.batchSize) this.flush();
    else if (!this._timer) this._timer = setTimeout(() => this.flush(), this.options.flushIntervalMs);
  }

  async flush() {
    clearTimeout(this._timer);
    this._timer = null;
    if (!this.queue.length) return;
    const batch = this.queue.splice(0, 100);
    this.stats.flushes++;
    // keepalive lets a flush outlive the page, but browsers cap such bodies at 64 KiB.
    const keepalive = JSON.stringify(batch).length < this.options.beaconMaxBytes;
    const response = await this._request("POST", "/api/assessments/events", { events: batch }, 1, {
      keepalive,
    });
    if (!response.ok && retryable(response.status)) {
      // Put them back (the server dedupes by messageId, so a resend is harmless).
      this.queue.unshift(...batch);
      if (!this._timer) {
        this._timer = setTimeout(() => this.flush(), this.options.flushIntervalMs);
      }
    }
  }

  _pageHidden() {
    if (this.status && this.status !== "completed") {
      this.status = "abandoned";
      this._beacon("/api/assessments/session", { sessionId: this.sessionId, status: "abandoned" });
    }
    this._beaconEvents();
  }

  _beaconEvents() {
    clearTimeout(this._timer);
    this._timer = null;
    while (this.queue.length) {
      // Keep each beacon under the browser's 64 KiB cap.
      let count = Math.min(this.queue.length, 500);
      let body = JSON.stringify({ events: this.queue.slice(0, count) });
      while (body.length > this.options.beaconMaxBytes && count > 1) {
        count = Math.ceil(count / 2);
        body = JSON.stringify({ events: this.queue.slice(0, count) });
      }
      if (!this._beacon("/api/assessments/events", null, body)) break; // retry on next flush
      this.queue.splice(0, count);
    }
  }

  // sendBeacon cannot set headers: the publishable key rides in the query, the body is
  // text/plain (no CORS preflight), and the server parses the JSON inside.
  _beacon(path, payload, raw) {
    try {
      const key = encodeURIComponent(this.options.publishableKey);
      const sent = navigator.sendBeacon(
        `${this.options.baseUrl}${path}?key=${key}`,
        raw ?? JSON.stringify(payload),
      );
      if (sent) this.stats.beacons++;
      return sent;
    } catch {
      return false;
    }
  }

  // --- transport: never throws; network failures come back as status 0 ------------------

  async _request(method, path, body, tries = 1, extra = {}) {
    let last = { ok: false, status: 0, body: null };
    for (let n = 0; n < tries; n++) {
      try {
        const response = await fetch(`${this.options.baseUrl}${path}`, {
          method,
          headers: {
            Authorization: `Bearer ${this.options.publishableKey}`,
            "Content-Type": "application/json",
          },
          body: body === undefined ? undefined : JSON.stringify(body),
          ...extra,
        });
        const parsed = await response.json().catch(() => null);
        last = { ok: response.ok, status: response.status, body: parsed };
      } catch (error) {
        last = { ok: false, status: 0, body: null, error };
      }
      if (last.ok || !retryable(last.status)) return last;
      if (n + 1 < tries) await sleep(this.options.retryBaseMs * 2 ** n);
    }
    return last;
  }
}
