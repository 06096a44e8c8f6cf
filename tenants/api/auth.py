"""Bearer-token authentication: `Authorization: Bearer <token>`, a token from
POST /api/v1/accounts or POST /api/v1/tokens."""

from typing import cast

from django.http import HttpRequest
from ninja.security import HttpBearer

from tenants import selectors
from tenants.errors import AuthenticationFailed
from tenants.models import Account


def bearer_token(request: HttpRequest) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("missing bearer token (Authorization: Bearer <token>)")
    return token.strip()


class BearerToken(HttpBearer):
    """Every operation's auth unless it says otherwise. A missing token and a wrong
    one are told apart in the message, both 401."""

    def __call__(self, request: HttpRequest) -> Account:
        return self.authenticate(request, bearer_token(request))

    def authenticate(self, request: HttpRequest, token: str) -> Account:
        account = selectors.account_for_token(token)
        if account is None:
            raise AuthenticationFailed("invalid token")
        return account


def account_of(request: HttpRequest) -> Account:
    """The account the request's token names (set by BearerToken)."""
    return cast(Account, request.auth)  # type: ignore[attr-defined]


def actor(request: HttpRequest) -> str:
    """Who did it, as the event log names API callers."""
    return f"api:{account_of(request).user.email}"
