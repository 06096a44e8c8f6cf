"""The minimal web flow, the admin console and the health endpoint."""

import pytest
from django.contrib.auth import get_user_model

from tenants.models import Tenant
from tests.conftest import connect

pytestmark = pytest.mark.timeout(120)


def test_sign_up_create_a_database_and_see_its_string_once(live, client):
    response = client.post("/signup", {"email": "web@example.com", "password": "short"})
    assert response.status_code == 200
    assert b"too short" in response.content
    response = client.post(
        "/signup", {"email": "web@example.com", "password": "correct horse battery"}
    )
    assert response.status_code == 302
    page = client.get("/")
    assert b"0 of 3 databases" in page.content

    response = client.post("/databases/new", {"name": "Bad Name"}, follow=True)
    assert b"lowercase letters" in response.content
    response = client.post("/databases/new", {"name": "webdb"}, follow=True)
    assert response.status_code == 200
    tenant = Tenant.objects.get(name="webdb")
    url = response.context["connection_string"]
    assert url.startswith(f"postgresql://{tenant.role_name}:")
    assert url.encode() in response.content
    with connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # Shown once: a second visit does not show it.
    again = client.get(f"/databases/{tenant.pk}/created", follow=True)
    assert url.encode() not in again.content
    assert b"only once" in again.content
    assert b"webdb" in client.get("/").content


def test_log_in_and_out(db, client):
    from tenants.services import account_create
    from tests.conftest import ensure_platform_rows

    ensure_platform_rows()
    account_create(email="in@example.com", password="correct horse battery")
    assert client.get("/").status_code == 302
    response = client.post("/login", {"username": "in@example.com", "password": "wrong"})
    assert response.status_code == 200
    response = client.post(
        "/login", {"username": "in@example.com", "password": "correct horse battery"}
    )
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    client.post("/logout")
    assert client.get("/").status_code == 302


def test_the_admin_console_lists_and_filters_tenants(live, client, alice):
    from tests.test_api_databases import create

    db = create(alice, "adminview")
    staff = get_user_model().objects.create_superuser("ops", "ops@example.com", "ops password 1")
    client.force_login(staff)
    for path in (
        "/admin/tenants/host/",
        "/admin/tenants/plan/",
        "/admin/tenants/event/",
        "/admin/tenants/tenant/?state__exact=running",
        "/admin/tenants/tenant/?q=alice",
        f"/admin/tenants/tenant/{db['id']}/change/",
        "/admin/tenants/plan/1/change/",
    ):
        response = client.get(path)
        assert response.status_code in (200, 302), path
    listing = client.get("/admin/tenants/tenant/?q=alice").content
    assert b"adminview" in listing
    page = client.get(f"/admin/tenants/tenant/{db['id']}/change/").content
    assert b"provision" in page  # the event timeline
    assert db["password"].encode() not in page


def test_non_staff_users_get_no_admin(live, client, alice):
    user = get_user_model().objects.get(email="alice@example.com")
    client.force_login(user)
    response = client.get("/admin/tenants/tenant/")
    assert response.status_code == 302
    assert "/admin/login" in response["Location"]


def test_healthz_checks_every_dependency(live, client):
    response = client.get("/healthz")
    assert response.status_code == 200, response.content
    assert response.json()["checks"] == {"controlplane": "ok", "redis": "ok", "pooler": "ok"}
