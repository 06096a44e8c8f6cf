"""Domain errors; each carries the HTTP status the API answers with."""


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
