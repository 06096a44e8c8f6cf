"""Domain errors: what the services refuse, and why. They know nothing of HTTP; the API
and the web pages map them to statuses in one place (tenants/api/errors.py)."""

import re


class ServiceError(Exception):
    """Something the caller asked for that the platform refuses, with a message
    the caller may read."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServiceError):
    """A bad name, a malformed body, a value out of range."""


class AuthenticationFailed(ServiceError):
    """No credentials, or wrong ones."""


class QuotaExceeded(ServiceError):
    """The plan's limit is reached."""


class NotFound(ServiceError):
    """No such object, or another account's (the two are never told apart)."""


class Conflict(ServiceError):
    """A name already in use, or a state change refused because of the current state."""


class TooManyRequests(ServiceError):
    """Too many of these from this client lately; try again later."""


class Unavailable(ServiceError):
    """The platform cannot do it now (no room, a host that does not answer)."""


# An absolute path with at least two parts, not a URL's path.
_HOST_PATH = re.compile(r"(?<![\w:/.~-])/(?:[\w.@+-]+/)+([\w.@+-]*)")


def for_tenant(text: str) -> str:
    """An error's text as its tenant may see it: where things live on the host
    (instance, socket and data directories, the checkout) is the operator's to
    know, so each path is cut to its last part. The full text goes to the log."""
    return _HOST_PATH.sub(lambda m: m.group(1) or "/", text)
