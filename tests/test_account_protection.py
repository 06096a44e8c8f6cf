"""Accounts against guessing and leaks: failed logins are throttled per account
and per address (API and web), a password change revokes the API tokens made with
the old one, reset mails are limited, long emails are a 400, pages and answers that
show a secret are never cached."""

import json
import random
import textwrap
import time

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.cache import cache

from tenants.models import ApiToken
from tests.conftest import Api, signup
from tests.helpers import run_django

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def fresh_counters():
    cache.clear()
    yield
    cache.clear()


def test_failed_api_logins_are_throttled_per_account(db, client):
    api = signup(client, "target@example.com")
    anon = Api(client)
    for _ in range(settings.DBAAS_LOGIN_FAILURES_PER_ACCOUNT):
        response = anon.call(
            "POST", "/tokens", {"email": "target@example.com", "password": "wrong"}
        )
        assert response.status_code == 401
    # The right password is refused too now: guessing cannot go on.
    right = {"email": "target@example.com", "password": "correct horse battery staple"}
    response = anon.call("POST", "/tokens", right)
    assert response.status_code == 429
    assert "too many failed logins" in response.json()["error"]
    # Another account is not locked by it.
    signup(client, "other@example.com")
    other = {"email": "other@example.com", "password": "correct horse battery staple"}
    assert anon.call("POST", "/tokens", other).status_code == 200
    assert api.call("GET", "/databases").status_code == 200  # tokens made before still work


def test_failed_web_logins_are_throttled_per_address(db, client, settings):
    settings.DBAAS_LOGIN_FAILURES_PER_IP = 5
    for n in range(5):
        page = client.post("/login", {"username": f"user{n}@example.com", "password": "wrong"})
        assert page.status_code == 200 and b"Please enter a correct" in page.content
    page = client.post("/login", {"username": "anyone@example.com", "password": "wrong"})
    assert page.status_code == 429
    assert b"Too many failed logins" in page.content


def test_a_password_change_revokes_the_api_tokens(db, client):
    api = signup(client, "changer@example.com")
    assert api.call("GET", "/databases").status_code == 200
    user = get_user_model().objects.get(email="changer@example.com")
    user.set_password("a new long passphrase")
    user.save()
    assert not ApiToken.objects.filter(account__user=user).exists()
    assert api.call("GET", "/databases").status_code == 401


def test_reset_mails_are_limited_per_account(db, client):
    signup(client, "mailbox@example.com")
    for _ in range(settings.DBAAS_RESET_MAILS_PER_HOUR + 3):
        response = client.post("/password-reset", {"email": "mailbox@example.com"})
        assert response.status_code == 302  # the same answer whatever happens
    assert len(mail.outbox) == settings.DBAAS_RESET_MAILS_PER_HOUR


def test_a_long_email_is_a_clear_400(db, client):
    email = "a" * 160 + "@example.com"
    response = Api(client).call("POST", "/accounts", {"email": email, "password": "x" * 20})
    assert response.status_code == 400
    assert "150 characters" in response.json()["error"]
    page = client.post("/signup", {"email": email, "password": "a long passphrase"})
    assert page.status_code == 400 and b"150 characters" in page.content


def test_answers_that_show_a_secret_are_not_cached(db, client):
    response = Api(client).call(
        "POST", "/accounts", {"email": "nocache@example.com", "password": "a long passphrase"}
    )
    assert "no-store" in response["Cache-Control"]


def test_pages_carry_a_content_security_policy(db, client):
    page = client.get("/login")
    policy = page["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
    assert b"<script>" not in page.content  # the page's own script is a file
    assert page["X-Content-Type-Options"] == "nosniff"


def test_served_over_https_cookies_are_secure_and_hsts_is_sent():
    """With DBAAS_PUBLIC_URL=https://..., behind a proxy that ends TLS: a fresh
    process, since these settings are read at start."""
    probe = textwrap.dedent(
        """
        import json, django
        django.setup()
        from django.conf import settings
        from django.test import Client
        page = Client().get("/login", HTTP_HOST="db.example.com", HTTP_X_FORWARDED_PROTO="https")
        print(json.dumps({
            "status": page.status_code,
            "hsts": page.get("Strict-Transport-Security"),
            "csrf_cookie_secure": bool(page.cookies["csrftoken"]["secure"]),
            "session_cookie_secure": settings.SESSION_COOKIE_SECURE,
            "trusted_origins": settings.CSRF_TRUSTED_ORIGINS,
        }))
        """
    )
    out = run_django(probe, {"DBAAS_PUBLIC_URL": "https://db.example.com"})
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["status"] == 200
    assert seen["hsts"].startswith("max-age=31536000")
    assert seen["csrf_cookie_secure"] and seen["session_cookie_secure"]
    assert "https://db.example.com" in seen["trusted_origins"]


def _windows():
    now = int(time.time() // 3600)
    return (now - 1, now, now + 1)


def test_sign_ups_are_rate_limited_per_address(db, client, settings):
    from tests.conftest import ensure_platform_rows

    ensure_platform_rows()
    settings.DBAAS_SIGNUPS_PER_IP_HOUR = 2
    # Addresses of their own: Redis keeps counters across test sessions.
    address, other = (f"198.51.100.{n}" for n in random.sample(range(1, 255), 2))
    cache.delete_many([f"ratelimit:signup:{a}:{w}" for a in (address, other) for w in _windows()])
    statuses = []
    for n in range(3):
        response = client.post(
            "/signup",
            {"email": f"many{n}@example.com", "password": "correct horse battery"},
            REMOTE_ADDR=address,
        )
        statuses.append(response.status_code)
        client.logout()
    assert statuses == [302, 302, 429]
    assert b"Too many sign-ups" in response.content
    assert not get_user_model().objects.filter(email="many2@example.com").exists()
    # The API counts sign-ups from the same address in the same window.
    response = client.post(
        "/api/v1/accounts",
        {"email": "api@example.com", "password": "correct horse battery"},
        content_type="application/json",
        REMOTE_ADDR=address,
    )
    assert response.status_code == 429
    assert response.json() == {"error": "too many sign-ups from your address; try again in an hour"}
    # Another address is not affected.
    response = client.post(
        "/signup",
        {"email": "elsewhere@example.com", "password": "correct horse battery"},
        REMOTE_ADDR=other,
    )
    assert response.status_code == 302
