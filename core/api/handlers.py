"""JSON 404/500 for API paths, so even errors outside DRF views use the one error shape."""

from django.views import defaults

from core.api.errors import error_response


def _is_api(request) -> bool:
    return request.path.startswith("/api/") or request.path.startswith("/health")


def not_found(request, exception=None):
    if _is_api(request):
        return error_response("not_found", "No such endpoint or object.", 404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    if _is_api(request):
        return error_response("internal_error", "Something went wrong on our side.", 500)
    return defaults.server_error(request)


def bad_request(request, exception=None):
    # e.g. DisallowedHost or another SuspiciousOperation raised before any view ran
    if _is_api(request):
        return error_response("bad_request", "The request is malformed.", 400)
    return defaults.bad_request(request, exception)


def permission_denied(request, exception=None):
    if _is_api(request):
        return error_response("permission_denied", "You may not do this.", 403)
    return defaults.permission_denied(request, exception)
