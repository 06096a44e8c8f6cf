"""The web pages (through Django's test client) and the admin console.

The same flows in a real browser are in test_browser.py."""

import re

import psycopg
import pytest

from tenants.models import Tenant
from tests.conftest import connect, signup, wait_until

pytestmark = pytest.mark.timeout(120)


def test_sign_up_create_a_database_and_see_its_string_once(live, client):
    response = client.post("/signup", {"email": "web@example.com", "password": "short"})
    assert response.status_code == 400
    assert b"too short" in response.content
    response = client.post(
        "/signup", {"email": "web@example.com", "password": "correct horse battery"}
    )
    assert response.status_code == 302
    page = client.get("/")
    assert b"0 of 3 databases" in page.content

    response = client.post("/databases/new", {"name": "Bad Name"})
    assert response.status_code == 400
    assert b"lowercase letters" in response.content
    response = client.post("/databases/new", {"name": "webdb"}, follow=True)
    assert response.status_code == 200
    tenant = Tenant.objects.get(name="webdb")
    url = response.context["connection_string"]
    assert url.startswith(f"postgresql://{tenant.role_name}:")
    assert url.encode() in response.content
    assert response.context["pooled_connection_string"].encode() in response.content
    for snippet in (b"psql", b"dj_database_url", b"psycopg.connect", b"schema.prisma", b"pg.Pool"):
        assert snippet in response.content
    with connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # Shown once: a second visit does not show it.
    again = client.get(f"/databases/{tenant.pk}/credentials", follow=True)
    assert url.encode() not in again.content
    assert b"only once" in again.content
    assert b"webdb" in client.get("/").content
    # Another account's database is not there at all.
    other = signup(client.__class__(), "other@example.com")
    mine = other.call("POST", "/databases", {"name": "theirs"}).json()
    assert client.get(f"/databases/{mine['id']}").status_code == 404
    assert client.post(f"/databases/{mine['id']}/sleep").status_code == 404


def test_password_reset_by_email(db, client, mailoutbox):
    from tenants.services import account_create
    from tests.conftest import ensure_platform_rows

    ensure_platform_rows()
    account_create(email="forgot@example.com", password="correct horse battery")
    response = client.post("/password-reset", {"email": "forgot@example.com"}, follow=True)
    assert b"Check your email" in response.content
    # An unknown address gets the same answer and no mail.
    client.post("/password-reset", {"email": "nobody@example.com"})
    assert len(mailoutbox) == 1
    link = re.search(r"http://testserver(/password-reset/\S+)", mailoutbox[0].body).group(1)
    form = client.get(link, follow=True)
    assert b"Choose a new password" in form.content
    response = client.post(
        form.redirect_chain[-1][0],
        {"new_password1": "a brand new passphrase", "new_password2": "a brand new passphrase"},
        follow=True,
    )
    assert b"Password set" in response.content
    assert client.login(username="forgot@example.com", password="a brand new passphrase")
    assert not client.login(username="forgot@example.com", password="correct horse battery")


def test_the_database_page_and_its_actions(live, client):
    from tests.helpers import measure

    web_login(client, "page@example.com")
    created = client.post("/databases/new", {"name": "pagedb"}, follow=True)
    first_url = created.context["connection_string"]
    tenant = Tenant.objects.get(name="pagedb")
    with connect(first_url) as conn:
        conn.execute("CREATE TABLE t (v int); INSERT INTO t VALUES (7)")
        conn.commit()
    page = client.get(f"/databases/{tenant.pk}")
    assert page.status_code == 200
    for text in (tenant.database_name, tenant.role_name, "Back up now", "Put to sleep"):
        assert text.encode() in page.content

    # Reset password: the new string is shown once, the old one stops working.
    reset = client.post(f"/databases/{tenant.pk}/password", follow=True)
    new_url = reset.context["connection_string"]
    assert new_url != first_url and b"only once" in reset.content
    with pytest.raises(psycopg.OperationalError):
        connect(first_url).close()
    with connect(new_url) as conn:
        assert conn.execute("SELECT v FROM t").fetchone() == (7,)

    # Sleep and wake.
    asleep = client.post(f"/databases/{tenant.pk}/sleep", follow=True)
    assert b"is asleep" in asleep.content
    assert Tenant.objects.get(pk=tenant.pk).state == "sleeping"
    awake = client.post(f"/databases/{tenant.pk}/wake", follow=True)
    assert b"pagedb is running" in awake.content

    # Back up now, then restore it into a new database.
    client.post(f"/databases/{tenant.pk}/backups", follow=True)
    backup = wait_until(lambda: tenant.backups.filter(state="done").first())
    page = client.get(f"/databases/{tenant.pk}")
    assert f"/backups/{backup.pk}/restore".encode() in page.content
    restored = client.post(
        f"/databases/{tenant.pk}/backups/{backup.pk}/restore",
        {"target": "new", "name": "pagecopy"},
        follow=True,
    )
    assert b"pagecopy is ready" in restored.content
    with connect(restored.context["connection_string"]) as conn:
        assert conn.execute("SELECT v FROM t").fetchone() == (7,)

    # The dashboard shows sizes once the host has measured them.
    measure(tenant.host)
    dashboard = client.get("/")
    assert b"2 of 3 databases" in dashboard.content
    assert Tenant.objects.get(pk=tenant.pk).size_bytes > 1_000_000
    assert b" MB of " in dashboard.content

    # Delete: the typed name must match.
    wrong = client.post(f"/databases/{tenant.pk}/delete", {"confirm_name": "nope"})
    assert wrong.status_code == 400 and b"Type the database" in wrong.content
    assert Tenant.objects.get(pk=tenant.pk).state == "running"
    gone = client.post(f"/databases/{tenant.pk}/delete", {"confirm_name": "pagedb"}, follow=True)
    assert b"pagedb is being deleted" in gone.content
    wait_until(lambda: Tenant.objects.get(pk=tenant.pk).state == "deleted")
    assert client.get(f"/databases/{tenant.pk}").status_code == 404


def test_quota_reached_is_said_and_refused(live, client):
    web_login(client, "full@example.com")
    for name in ("one", "two", "three"):
        client.post("/databases/new", {"name": name})
    dashboard = client.get("/")
    assert b"reached your plan" in dashboard.content
    response = client.post("/databases/new", {"name": "four"})
    assert response.status_code == 403
    assert b"3 databases" in response.content
    assert not Tenant.objects.filter(name="four").exists()


def web_login(client, email: str) -> None:
    response = client.post("/signup", {"email": email, "password": "correct horse battery"})
    assert response.status_code == 302, response.content


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
