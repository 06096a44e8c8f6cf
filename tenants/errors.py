"""Domain errors; each carries the HTTP status the API answers with."""

import re


class ServiceError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServiceError):
    status = 400


class AuthenticationFailed(ServiceError):
    status = 401


class QuotaExceeded(ServiceError):
    status = 403


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    """A name already in use, or a state change refused because of the current state."""

    status = 409


class TooManyRequests(ServiceError):
    status = 429


class Unavailable(ServiceError):
    status = 503


# An absolute path with at least two parts, not a URL's path.
_HOST_PATH = re.compile(r"(?<![\w:/.~-])/(?:[\w.@+-]+/)+([\w.@+-]*)")


def for_tenant(text: str) -> str:
    """An error's text as its tenant may see it: where things live on the host
    (instance, socket and data directories, the checkout) is the operator's to
    know, so each path is cut to its last part. The full text goes to the log."""
    return _HOST_PATH.sub(lambda m: m.group(1) or "/", text)
