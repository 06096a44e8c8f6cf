"""Response headers Django does not set by itself, and the answer when a service the
platform depends on is down."""

import logging

import kombu.exceptions
import redis.exceptions
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse

log = logging.getLogger(__name__)

# The control-plane PostgreSQL or Redis (cache, Celery's broker) cannot be reached.
DEPENDENCY_ERRORS = (
    OperationalError,
    InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)
RETRY_AFTER_SECONDS = 10


class ContentSecurityPolicyMiddleware:
    """Sends settings.CONTENT_SECURITY_POLICY with every HTML page, so that text a
    user managed to get into a page cannot run as a script there."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.get("Content-Type", "").startswith("text/html"):
            response.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        return response


class ApiMethodNotAllowedMiddleware:
    """A method an API route does not have is answered 405 in JSON, like every other
    API error, with the `Allow` header django-ninja sets."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.status_code != 405 or not is_api(request.path):
            return response
        answer = JsonResponse({"error": f"method {request.method} not allowed"}, status=405)
        answer["Allow"] = response.get("Allow", "")
        return answer


def is_api(path: str) -> bool:
    return path.startswith("/api/") or path == "/healthz"


class DependencyUnavailableMiddleware:
    """A request that fails because the control-plane database or Redis is down is
    answered 503 with a clear message (JSON for the API), not 500: the client may
    try again, and the supervisor brings the service back."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, DEPENDENCY_ERRORS):
            return None
        log.warning("%s %s: a dependency is down: %s", request.method, request.path, exception)
        message = "the service is briefly unavailable; try again in a few seconds"
        if is_api(request.path):
            response = JsonResponse({"error": message}, status=503)
        else:
            # Plain text: a page with the site's layout would need the database too.
            response = HttpResponse(
                f"503 Service Unavailable: {message}.\n", status=503, content_type="text/plain"
            )
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
