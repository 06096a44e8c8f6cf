"""Sign-up and API tokens."""

from django.http import HttpRequest
from django.views.decorators.cache import never_cache
from ninja import Router, Status
from ninja.decorators import decorate_view

from tenants import ratelimit, services
from tenants.api.answers import BAD_JSON, operation
from tenants.api.auth import bearer_token
from tenants.api.schemas import Account, Credentials, Error, NewAccount, Revoked, Token
from tenants.errors import AuthenticationFailed

router = Router(tags=["accounts"])


@router.post(
    "api/v1/accounts",
    **operation(
        "createAccount",
        "Sign up",
        {
            201: (Account, "The account, with its first API token"),
            400: (Error, f"{BAD_JSON}, a bad email, or a weak password"),
            409: (Error, "An account with this email exists"),
            429: (Error, "Too many sign-ups from this address in the last hour"),
            503: (Error, "No default plan is configured"),
        },
        auth=False,
    ),
)
@decorate_view(never_cache)  # the answer holds a token
def create_account(request: HttpRequest, payload: NewAccount):
    ratelimit.check_signup(request)
    account, token = services.account_create(email=payload.email, password=payload.password)
    return Status(201, Account(email=account.user.email, token=token))


@router.post(
    "api/v1/tokens",
    **operation(
        "createToken",
        "Get a new API token",
        {
            200: (Token, "A new token"),
            400: (Error, f"{BAD_JSON}, or an email or password that is not a string"),
            401: (Error, "Wrong or missing email or password"),
        },
        auth=False,
    ),
)
@decorate_view(never_cache)  # the answer holds a token
def create_token(request: HttpRequest, payload: Credentials):
    # No account's email holds a NUL, and PostgreSQL refuses one even in a query.
    if not payload.email or not payload.password or "\x00" in payload.email:
        raise AuthenticationFailed("invalid email or password")
    ratelimit.check_login(request, payload.email)
    try:
        token = services.token_create(email=payload.email, password=payload.password)
    except AuthenticationFailed:
        ratelimit.login_failed(request, payload.email)
        raise
    return Token(token=token)


@router.delete(
    "api/v1/tokens/current",
    **operation(
        "revokeToken",
        "Revoke the token this request presents",
        {200: (Revoked, "It no longer works")},
    ),
)
def revoke_token(request: HttpRequest):
    services.token_revoke(raw_token=bearer_token(request))
    return Revoked(revoked=True)
