"""An operation's answers, each described once: per status the schema django-ninja
checks the answer against, and what the status means in the OpenAPI document."""

from typing import Any

from tenants.api.schemas import CreateFailed, DatabaseWithCredentials, Error

BAD_JSON = "The body is not valid JSON, or not a JSON object"
UNAUTHORIZED = (Error, "Missing or invalid bearer token")

# A status's schema (None when the view answers with its own HttpResponse) and its
# meaning; or, for bodies that are not JSON, the OpenAPI response object itself.
Answers = dict[int, tuple[Any, str] | dict[str, Any]]


def operation(
    operation_id: str,
    summary: str,
    answers: Answers,
    *,
    description: str = "",
    auth: bool = True,
) -> dict[str, Any]:
    """The keyword arguments of a router's @get/@post/... for one operation.
    Operations with auth also answer 401; every route answers 405 (with `Allow`) to
    a method it does not list (dbaas.middleware.ApiMethodNotAllowedMiddleware)."""
    if auth:
        answers = {**answers, 401: UNAUTHORIZED}
    documented: dict[int, dict[str, Any]] = {}
    schemas: dict[int, Any] = {}
    for status, answer in sorted(answers.items()):
        if isinstance(answer, dict):
            schemas[status], documented[status] = None, answer
        else:
            schemas[status], documented[status] = answer[0], {"description": answer[1]}
    options: dict[str, Any] = {
        "operation_id": operation_id,
        "summary": summary,
        "description": description or None,
        "response": schemas,
        "openapi_extra": {"responses": documented},
    }
    if not auth:
        options["auth"] = None
    return options


def created_database(what: str) -> Answers:
    """The answers of everything that makes a database (POST /databases and restores
    into a new one)."""
    return {
        201: (DatabaseWithCredentials, f"{what}; it accepts connections now"),
        202: (
            DatabaseWithCredentials,
            f"{what}, still provisioning after the wait; the strings work once it runs",
        ),
        400: (Error, f"{BAD_JSON}, or a bad name"),
        403: (Error, "The plan's quota of databases is used up"),
        409: (Error, "The account already has a database with this name"),
        500: (CreateFailed, "The instance could not be made"),
        503: (Error, "No host has room for a new database"),
    }
