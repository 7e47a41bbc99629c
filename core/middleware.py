"""Request ids: every response carries X-Request-ID and every log line of the request too."""

import uuid

from core.logging import log_context


class RequestIdMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if 0 < len(incoming) <= 64 else uuid.uuid4().hex
        request.request_id = request_id
        token = log_context.set({"request_id": request_id})
        try:
            response = self.get_response(request)
        finally:
            log_context.reset(token)
        response["X-Request-ID"] = request_id
        return response
