"""How the API answers what goes wrong: the domain's errors (tenants/errors.py) mapped
to HTTP statuses in one table, and django-ninja's own errors (a body or parameter
that does not fit its schema, no credentials) turned into the same `{"error": "..."}`
bodies. The web pages answer with the same statuses (`status_for`)."""

from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import HttpError, ValidationError

from tenants.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidInput,
    NotFound,
    QuotaExceeded,
    ServiceError,
    TooManyRequests,
    Unavailable,
)

HTTP_STATUS: dict[type[ServiceError], int] = {
    InvalidInput: 400,
    AuthenticationFailed: 401,
    QuotaExceeded: 403,
    NotFound: 404,
    Conflict: 409,
    TooManyRequests: 429,
    Unavailable: 503,
}

# What a path parameter names, for "<thing> <id> not found".
PATH_OBJECTS = {"tenant_id": "database", "backup_id": "backup", "restore_id": "restore"}


def status_for(exc: ServiceError) -> int:
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 400


def install(api: NinjaAPI) -> None:
    def answer(request: HttpRequest, status: int, message: str) -> HttpResponse:
        return api.create_response(request, {"error": message}, status=status)

    @api.exception_handler(ServiceError)
    def refused(request: HttpRequest, exc: ServiceError) -> HttpResponse:
        return answer(request, status_for(exc), exc.message)

    @api.exception_handler(ValidationError)
    def invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
        first = exc.errors[0]
        source, *where = first["loc"]
        if source == "path":
            # Not an id at all: it names nothing, like an unknown id.
            name = str(where[0])
            value = request.resolver_match.kwargs.get(name) if request.resolver_match else ""
            return answer(request, 404, f"{PATH_OBJECTS.get(name, name)} {value} not found")
        return answer(request, 400, describe(source, where, first))

    @api.exception_handler(HttpError)
    def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        # django-ninja wraps what the body parser raises (tenants/api/parser.py).
        if isinstance(exc.__cause__, ServiceError):
            return refused(request, exc.__cause__)
        return answer(request, exc.status_code, exc.message)

    @api.exception_handler(Exception)
    def unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
        # Left to Django: a database or Redis that is down answers 503
        # (dbaas.middleware), anything else a logged JSON 500 (dbaas.views).
        raise exc


def describe(source: str, where: list[Any], error: dict[str, Any]) -> str:
    """A pydantic error as one sentence: `field 'name' must be a string`."""
    if source == "body" and len(where) <= 1:
        # The body as a whole (its parameter's name is django-ninja's, not the caller's).
        if error["type"] == "missing":
            return "a JSON object is required as the request body"
        return "request body must be a JSON object"
    path = where[1:] if source == "body" else where
    what = {"body": "field", "query": "query parameter"}.get(source, source)
    subject = f"{what} {'.'.join(str(p) for p in path)!r}"
    kind = error["type"]
    if kind == "missing":
        return f"{subject} is required"
    if kind == "string_type":
        return f"{subject} must be a string"
    if kind == "bool_parsing":
        return f"{subject} must be true or false"
    if kind == "literal_error":
        return f"{subject} must be {error['ctx']['expected']}"
    return f"{subject}: {error['msg'][:1].lower()}{error['msg'][1:]}"
