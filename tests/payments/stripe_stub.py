"""A real HTTP server on 127.0.0.1 standing in for Stripe's API.

It records every request (method, path, headers, form parameters exactly as the `stripe` SDK
encoded them) and answers like Stripe: Checkout Sessions are created, retrieved and expired;
a repeated Idempotency-Key replays the first answer (as Stripe does); errors use Stripe's
error JSON shape; a retrieve with `expand[]=line_items` includes the line item and its price.
Behaviour is switchable: `stub.mode = "server_error"`, or a script of
modes consumed one per request: `stub.script = ["server_error", "success"]`.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

ERRORS = {
    "invalid_request": (
        400,
        {
            "type": "invalid_request_error",
            "code": "resource_missing",
            "param": "line_items[0][price]",
            "message": "No such price: 'price_missing'",
            "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
        },
    ),
    "card_error": (
        402,
        {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "generic_decline",
            "message": "Your card was declined.",
        },
    ),
    "auth_error": (
        401,
        {"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_****"},
    ),
    "rate_limited": (
        429,
        {"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests."},
    ),
    "server_error": (500, {"type": "api_error", "message": "An unknown error occurred."}),
}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    params: dict  # flat form keys as sent: {"line_items[0][price]": "price_x", ...}


@dataclass
class StripeStub:
    mode: str = "success"
    slow_seconds: float = 2.0
    script: list = field(default_factory=list)
    prices: dict = field(default_factory=lambda: {"price_assessment": (1900, "eur")})
    sessions: dict = field(default_factory=dict)
    line_item_prices: dict = field(default_factory=dict)  # session id → price id (or None)
    requests: list = field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._idempotency_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._replays: dict[str, tuple[int, dict]] = {}
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> StripeStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                stub._serve(self)

            def do_POST(self):
                stub._serve(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- helpers for tests -------------------------------------------------------------------
    def calls(self, method: str | None = None, path_prefix: str = "") -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and r.path.startswith(path_prefix)
            ]

    def add_session(self, session_id: str, *, price: str | None = None, **fields) -> dict:
        """A Checkout Session Stripe knows (default: 19.00 EUR, like PaymentSessionFactory).
        `price` is its line item's price id, returned when the client expands line_items."""
        session = {
            "id": session_id,
            "object": "checkout.session",
            "status": "open",
            "payment_status": "unpaid",
            "payment_intent": None,
            "livemode": False,
            "metadata": {},
            "amount_total": 1900,
            "currency": "eur",
            **fields,
        }
        self.sessions[session_id] = session
        self.line_item_prices[session_id] = price
        return session

    # -- the server --------------------------------------------------------------------------
    def _serve(self, handler: BaseHTTPRequestHandler):
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length).decode() if length else ""
        path = urlsplit(handler.path).path
        query = urlsplit(handler.path).query
        params = dict(parse_qsl(raw or query, keep_blank_values=True))
        with self._lock:
            self.requests.append(
                Recorded(
                    handler.command,
                    path,
                    {k.lower(): v for k, v in handler.headers.items()},
                    params,
                )
            )
            mode = self.script.pop(0) if self.script else self.mode
        if mode == "slow":
            time.sleep(self.slow_seconds)
        if mode in ERRORS:
            status, error = ERRORS[mode]
            return self._send(handler, status, {"error": error})
        key = handler.headers.get("Idempotency-Key")
        if handler.command == "POST" and key:
            # one keyed request at a time: a concurrent retry gets the first answer replayed
            with self._idempotency_lock:
                replay = self._replays.get(key)
                if replay is None:
                    replay = self._route(handler.command, path, params)
                    self._replays[key] = replay
                    return self._send(handler, *replay)
            return self._send(handler, *replay, replayed=True)
        self._send(handler, *self._route(handler.command, path, params))

    def _route(self, method: str, path: str, params: dict) -> tuple[int, dict]:
        if method == "POST" and path == "/v1/checkout/sessions":
            return 200, self._create(params)
        if path.startswith("/v1/checkout/sessions/"):
            parts = path.removeprefix("/v1/checkout/sessions/").split("/")
            session = self.sessions.get(parts[0])
            if session is None:
                return 404, {
                    "error": {
                        "type": "invalid_request_error",
                        "code": "resource_missing",
                        "message": f"No such checkout.session: '{parts[0]}'",
                    }
                }
            if method == "POST" and parts[1:] == ["expire"]:
                session["status"] = "expired"
            if "line_items" in params.values():  # expand[0]=line_items, as Stripe does
                return 200, {**session, "line_items": self._line_items(session)}
            return 200, session
        return 404, {"error": {"type": "invalid_request_error", "message": "Unrecognized URL"}}

    def _line_items(self, session: dict) -> dict:
        price = self.line_item_prices.get(session["id"]) or f"price_adhoc_{session['id']}"
        item = {
            "id": f"li_{session['id']}",
            "object": "item",
            "amount_total": session["amount_total"],
            "currency": session["currency"],
            "price": {"id": price, "object": "price"},
            "quantity": 1,
        }
        return {"object": "list", "data": [item], "has_more": False}

    def _create(self, params: dict) -> dict:
        n = next(self._ids)
        session_id = f"cs_test_stub{n:04d}"
        if "line_items[0][price]" in params:
            amount, currency = self.prices[params["line_items[0][price]"]]
        else:
            amount = int(params["line_items[0][price_data][unit_amount]"])
            currency = params["line_items[0][price_data][currency]"]
        metadata = {
            k.removeprefix("metadata[").removesuffix("]"): v
            for k, v in params.items()
            if k.startswith("metadata[")
        }
        return self.add_session(
            session_id,
            price=params.get("line_items[0][price]"),
            url=f"https://checkout.stripe.com/c/pay/{session_id}",
            amount_total=amount,
            currency=currency,
            client_reference_id=params.get("client_reference_id"),
            customer_email=params.get("customer_email"),
            metadata=metadata,
            mode=params.get("mode"),
        )

    def _send(self, handler, status: int, body: dict, replayed: bool = False):
        data = json.dumps(body).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.send_header("Request-Id", f"req_stub{len(self.requests)}")
            if replayed:
                handler.send_header("Idempotent-Replayed", "true")
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and went away
