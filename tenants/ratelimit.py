"""Fixed-window rate limits on a shared cache (Redis), e.g. sign-ups per IP address."""

import hashlib
import time

from django.conf import settings
from django.core.cache import cache

from tenants.errors import TooManyRequests


def allow(key: str, limit: int, period_seconds: int) -> bool:
    """Count one more event for `key`; False once more than `limit` fell in this window.

    Every web worker shares the counter through the cache, and it expires by itself.
    """
    window = int(time.time() // period_seconds)
    name = f"ratelimit:{key}:{window}"
    cache.add(name, 0, timeout=period_seconds)
    try:
        count = cache.incr(name)
    except ValueError:  # expired between add and incr
        cache.set(name, 1, timeout=period_seconds)
        count = 1
    return count <= limit


def client_ip(request) -> str:
    """The peer's address; the web server listens on loopback or behind a proxy that
    the operator names in DBAAS_TRUSTED_PROXIES, whose X-Forwarded-For is believed."""
    peer = request.META.get("REMOTE_ADDR", "")
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if forwarded and peer in settings.DBAAS_TRUSTED_PROXIES:
        return forwarded.split(",")[-1].strip()
    return peer


def check_signup(request) -> None:
    """Refuse a sign-up past DBAAS_SIGNUPS_PER_IP_HOUR from this client's address."""
    key = f"signup:{client_ip(request)}"
    if not allow(key, settings.DBAAS_SIGNUPS_PER_IP_HOUR, 3600):
        raise TooManyRequests("too many sign-ups from your address; try again in an hour")


LOGIN_WINDOW = 900  # seconds


def _count(key: str, period_seconds: int) -> int:
    window = int(time.time() // period_seconds)
    return cache.get(f"ratelimit:{key}:{window}", 0)


def _account_key(email: str) -> str:
    """A cache key part for an email as typed (any characters): its digest."""
    return hashlib.sha256((email or "").strip().lower().encode()).hexdigest()[:32]


def check_login(request, email: str) -> None:
    """Refuse a login attempt (before the password is even checked) once this
    account, or this address, has failed too often in the last quarter of an hour:
    a password cannot be guessed at speed, nor every account tried from one place."""
    if (
        _count(f"loginfail:account:{_account_key(email)}", LOGIN_WINDOW)
        >= settings.DBAAS_LOGIN_FAILURES_PER_ACCOUNT
        or _count(f"loginfail:ip:{client_ip(request)}", LOGIN_WINDOW)
        >= settings.DBAAS_LOGIN_FAILURES_PER_IP
    ):
        raise TooManyRequests("too many failed logins; try again in 15 minutes")


def login_failed(request, email: str) -> None:
    allow(f"loginfail:account:{_account_key(email)}", 0, LOGIN_WINDOW)
    allow(f"loginfail:ip:{client_ip(request)}", 0, LOGIN_WINDOW)


def check_password_reset(request, email: str) -> bool:
    """At most a few reset mails per account and per address an hour (they go to a
    mailbox, and could be used to flood it)."""
    return allow(
        f"reset:account:{_account_key(email)}", settings.DBAAS_RESET_MAILS_PER_HOUR, 3600
    ) and allow(f"reset:ip:{client_ip(request)}", 5 * settings.DBAAS_RESET_MAILS_PER_HOUR, 3600)
