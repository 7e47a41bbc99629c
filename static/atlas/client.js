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
// - session status is tracked: started → in_progress → completed, abandoned on page hide;
// - the session's secret token (sessionToken, returned once when the session is created) is
//   kept in sessionStorage next to the session id and sent as X-Session-Token on every later
//   call for that session (the abandon beacon, which cannot set headers, carries it in its
//   text/plain body). Without it a publishable key can neither read nor change the session.
//   If the token was never received (the creating response was lost), the client carries on
//   with a fresh session: the submit still carries every answer.

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

const TOKEN_REFUSALS = new Set(["session_token_required", "invalid_session_token"]);
const tokenRefused = (response) =>
  response.status === 403 && TOKEN_REFUSALS.has(response.body?.error?.code);
const tokenStorageKey = (sessionId) => `atlas.sessionToken.${sessionId}`;

// sessionStorage may be unavailable (privacy modes, sandboxed frames): the token then lives
// only in memory, for the life of the page.
function storedToken(sessionId) {
  try {
    return sessionStorage.getItem(tokenStorageKey(sessionId));
  } catch {
    return null;
  }
}

function storeToken(sessionId, token) {
  try {
    sessionStorage.setItem(tokenStorageKey(sessionId), token);
  } catch {
    // memory only
  }
}

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
    this.sessionToken = options.sessionToken || storedToken(this.sessionId);
    this._fields = {}; // what start()/update() said, re-sent if the session must be recreated
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

  // The session as this visitor may read it (status, responses; never email, first name or
  // form data), or null when it cannot be read (unknown, or its token is not held here).
  async load() {
    if (!this.sessionToken) return null;
    const response = await this._request("GET", `/api/assessments/session/${this.sessionId}`);
    if (!response.ok) return null;
    this.status = response.body.status;
    return response.body;
  }

  update(fields = {}) {
    return this._postSession(this.status || "started", fields);
  }

  async _postSession(status, fields = {}, canRestart = true) {
    this._fields = { ...this._fields, ...fields };
    const body = { sessionId: this.sessionId, status, ...this._fields };
    const response = await this._request("POST", "/api/assessments/session", body, 3);
    if (response.ok) {
      this.status = response.body.status;
      if (response.body.sessionToken) this._keepToken(response.body.sessionToken);
    } else if (canRestart && tokenRefused(response)) {
      // The session exists but its token never reached us: carry on with a fresh one.
      this._restartSession();
      return this._postSession(status, {}, false);
    }
    return response.body;
  }

  _keepToken(token) {
    this.sessionToken = token;
    storeToken(this.sessionId, token);
  }

  _restartSession() {
    this.sessionId = uuid();
    this.sessionToken = null;
  }

  // Answers merge server-side with one atomic UPDATE; resend-safe (keyed by question id).
  async answer(questionId, answer) {
    await this._sessionReady.catch(() => {});
    if (this.status !== "completed") this.status = "in_progress";
    const send = () =>
      this._request("POST", `/api/assessments/session/${this.sessionId}/answers`, {
        questionId,
        answer,
      }, 3);
    let response = await send();
    if (response.status === 404 || tokenRefused(response)) {
      // The session POST never arrived (offline at start), or its token never came back:
      // (re)create the session, then answer again.
      if (response.status !== 404) this._restartSession();
      this._sessionReady = this._postSession("in_progress");
      await this._sessionReady.catch(() => {});
      response = await send();
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
    await this._sessionReady.catch(() => {});
    let body = { ...payload, submissionId: attempt.id, sessionId: this.sessionId };
    const { submitRetries, retryBaseMs, retryMaxMs } = this.options;
    let sessionRepaired = false;
    for (let n = 0; ; n++) {
      this.stats.submitAttempts++;
      const response = await this._request("POST", "/api/assessments/submit", body, 1);
      if (response.ok) {
        this.status = "completed";
        this.track("assessment_submitted", { submissionId: attempt.id });
        return response.body;
      }
      if (!sessionRepaired && (response.status === 404 || tokenRefused(response))) {
        // Nothing was stored (the session is checked first). The session never arrived, or
        // its token never came back: (re)create it and submit into it, as a new attempt if
        // the session changed (its body, and so its submissionId, changes too).
        sessionRepaired = true;
        if (response.status !== 404) {
          this._restartSession();
          attempt.id = uuid();
        }
        this._sessionReady = this._postSession("in_progress");
        await this._sessionReady.catch(() => {});
        body = { ...payload, submissionId: attempt.id, sessionId: this.sessionId };
        continue;
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
      // a beacon cannot set headers: the session token rides in the text/plain body
      this._beacon("/api/assessments/session", {
        sessionId: this.sessionId,
        status: "abandoned",
        ...(this.sessionToken ? { sessionToken: this.sessionToken } : {}),
      });
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

  // sendBeacon cannot set headers: the publishable key rides in the query (a publishable key
  // only: it is public; a secret key in a URL is refused), the body is text/plain (no CORS
  // preflight), and the server parses the JSON inside.
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
            ...(this.sessionToken ? { "X-Session-Token": this.sessionToken } : {}),
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
