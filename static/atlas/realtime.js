// Atlas realtime for browsers: an ES module, no build step.
//
//   import { openRealtime } from "/static/atlas/realtime.js";
//   const stream = openRealtime({ tokenUrl: "/your/server/realtime-token", onEvent, onStatus });
//
// Your server mints a short-lived realtime token with its secret key
// (POST /api/realtime/tokens) and returns {token, streamUrl}; the page never sees a secret key.
// Every event arrives as EventSource's default message (its type is data.eventType). When the
// token expires the stream says so (`event: token_expired`): a new token is fetched and the
// stream resumes where it stopped (lastEventId), so no event is missed.

export function openRealtime({ tokenUrl, onEvent, onStatus = () => {} }) {
  let source = null;
  let lastEventId = null;
  let stopped = false;

  async function connect() {
    if (stopped) return;
    onStatus("connecting");
    let grant;
    try {
      const response = await fetch(tokenUrl, { method: "POST", credentials: "same-origin" });
      if (!response.ok) throw new Error(`token endpoint answered ${response.status}`);
      grant = await response.json();
    } catch (error) {
      onStatus("offline");
      setTimeout(connect, 3000);
      return;
    }
    const url = new URL(grant.streamUrl);
    url.searchParams.set("token", grant.token);
    if (lastEventId) url.searchParams.set("lastEventId", lastEventId);
    source = new EventSource(url);
    source.onopen = () => onStatus("live");
    source.onmessage = (message) => {
      lastEventId = message.lastEventId || lastEventId;
      onEvent(JSON.parse(message.data));
    };
    source.addEventListener("token_expired", () => {
      source.close();
      connect(); // a fresh token; resumes after lastEventId
    });
    source.addEventListener("access_revoked", () => {
      source.close();
      onStatus("ended");
    });
    source.onerror = () => {
      // EventSource retries on its own after a dropped connection; after a refusal (401/403)
      // it gives up (CLOSED): ask for a new token a little later.
      if (source.readyState === EventSource.CLOSED && !stopped) {
        onStatus("reconnecting");
        setTimeout(connect, 3000);
      } else {
        onStatus("reconnecting");
      }
    };
  }

  connect();
  return {
    close() {
      stopped = true;
      if (source) source.close();
    },
  };
}
