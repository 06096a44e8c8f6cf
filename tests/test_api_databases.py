"""The databases API end to end: API -> real Celery worker -> sandboxed instance ->
connection through the host's PgBouncer with TLS, with psql, psycopg and Django."""

import subprocess
import sys
import time

import psycopg
import pytest
from django.conf import settings

from tenants.host import agent
from tenants.models import Event, Tenant
from tests.conftest import connect
from tests.helpers import create, processes_of_uid, wait_for_state

pytestmark = pytest.mark.timeout(180)


def test_it_creates_a_database_that_works_at_once(live, alice):
    db = create(alice, "shop")
    assert db["state"] == "running"
    assert set(db) >= {
        "id",
        "name",
        "state",
        "host",
        "port",
        "database",
        "user",
        "plan",
        "created_at",
        "password",
        "connection_string",
    }
    assert db["connection_string"] == (
        f"postgresql://{db['user']}:{db['password']}@{settings.DBAAS_PUBLIC_HOST}:"
        f"{settings.DBAAS_PGBOUNCER_PORT + agent.shard_of(db['id'])}/{db['database']}"
        "?sslmode=verify-full"
    )
    assert db["port"] == settings.DBAAS_PGBOUNCER_PORT + db["id"] % settings.DBAAS_POOLER_SHARDS
    # psycopg 3 with default settings, prepared statements included, over TLS.
    with connect(db["connection_string"], prepare_threshold=0) as conn:
        assert conn.info.pgconn.ssl_in_use
        conn.execute("CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)")
        for name in ("apple", "pear", "plum"):
            conn.execute("INSERT INTO items (name) VALUES (%s)", (name,), prepare=True)
        rows = conn.execute(
            "SELECT name FROM items WHERE id > %s ORDER BY id", (1,), prepare=True
        ).fetchall()
        assert rows == [("pear",), ("plum",)]
        conn.commit()
    # psql, as a developer would paste it.
    out = subprocess.run(
        ["psql", db["connection_string"], "-tAc", "SELECT count(*) FROM items"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.strip() == "3", out.stderr
    # The object never shows the password again.
    got = alice.call("GET", f"/databases/{db['id']}").json()
    assert "password" not in got and "connection_string" not in got
    assert got["state"] == "running"
    assert [d["id"] for d in alice.call("GET", "/databases").json()["databases"]] == [db["id"]]
    assert Event.objects.filter(tenant_id=db["id"], to_state="running").exists()


DJANGO_APP = """
import sys, dj_database_url, django
from django.conf import settings
settings.configure(
    DATABASES={"default": dj_database_url.parse(sys.argv[1])},
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
    USE_TZ=True,
)
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth.models import User
User.objects.create_user("django-user", password="x" * 12)
print(User.objects.filter(username="django-user").count())
"""


def test_a_django_app_can_use_the_connection_string(live, alice):
    db = create(alice, "djangoapp")
    out = subprocess.run(
        [sys.executable, "-c", DJANGO_APP, db["connection_string"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize(
    "name", ["", "1abc", "Upper", "with-dash", "with space", "x" * 41, "a;drop", "é", 42, None]
)
def test_it_rejects_bad_names(db, alice, name):
    response = alice.call("POST", "/databases", {"name": name})
    assert response.status_code == 400
    assert response.json()["error"]
    assert not Tenant.objects.exists()


def test_it_refuses_a_name_already_used_by_the_account(live, alice, bob):
    create(alice, "app")
    response = alice.call("POST", "/databases", {"name": "app"})
    assert response.status_code == 409
    assert "already" in response.json()["error"]
    # Another account may use the same name: database names are unique per host.
    other = create(bob, "app")
    assert (
        other["database"]
        != Tenant.objects.get(account__user__email="alice@example.com").database_name
    )


def test_it_enforces_the_plans_quota(live, alice):
    for i in range(3):
        create(alice, f"db{i}")
    response = alice.call("POST", "/databases", {"name": "db3"})
    assert response.status_code == 403
    assert "3 databases" in response.json()["error"]
    assert Tenant.objects.count() == 3


def test_other_accounts_databases_are_not_found(live, alice, bob):
    db = create(alice, "private")
    for method, path in [
        ("GET", f"/databases/{db['id']}"),
        ("DELETE", f"/databases/{db['id']}"),
        ("POST", f"/databases/{db['id']}/password"),
    ]:
        response = bob.call(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]
    for missing in ("999999", "abc"):
        assert alice.call("GET", f"/databases/{missing}").status_code == 404
    assert bob.call("GET", "/databases").json() == {"databases": []}
    assert Tenant.objects.get(pk=db["id"]).state == "running"


def test_it_resets_the_password(live, alice):
    db = create(alice, "rotate")
    response = alice.call("POST", f"/databases/{db['id']}/password")
    assert response.status_code == 200
    new = response.json()
    assert new["password"] != db["password"]
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        connect(db["connection_string"])
    with connect(new["connection_string"]) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == db["user"]


def test_concurrent_password_resets_give_one_working_password(live, alice, live_server):
    """Resets of one database at the same moment: each answer is a password that
    works when it is given (200) or a clear refusal (409), never a 200 whose
    password another reset has already replaced."""
    import json
    import threading
    import urllib.error
    import urllib.request

    db = create(alice, "contested")
    barrier = threading.Barrier(5)
    answers: list[tuple[int, dict, float]] = []

    def reset() -> None:
        request = urllib.request.Request(  # noqa: S310 - the test's own http server
            f"{live_server.url}/api/v1/databases/{db['id']}/password",
            method="POST",
            headers={"Authorization": f"Bearer {alice.token}"},
        )
        barrier.wait()
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                answers.append((response.status, json.load(response), time.monotonic()))
        except urllib.error.HTTPError as exc:
            answers.append((exc.code, json.load(exc), time.monotonic()))

    threads = [threading.Thread(target=reset) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(status for status, _body, _at in answers)
    assert set(statuses) <= {200, 409}, answers
    assert statuses.count(200) >= 1
    for status, body, _at in answers:
        if status == 409:
            assert "being set right now" in body["error"]
    # The password of the last 200 works; every earlier one was replaced after it
    # was answered (one change at a time), and none of them was never applied.
    granted = sorted((at, body) for status, body, at in answers if status == 200)
    with connect(granted[-1][1]["connection_string"]) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == db["user"]
    events = Event.objects.filter(tenant_id=db["id"], action="password_applied").count()
    assert events == len(granted)


def test_it_deletes_everything(live, alice):
    db = create(alice, "doomed")
    tenant = Tenant.objects.get(pk=db["id"])
    runtime = agent.runtime_for(tenant)
    assert runtime.instance_dir(tenant.instance_id).exists()
    response = alice.call("DELETE", f"/databases/{db['id']}")
    assert response.status_code == 202
    assert response.json()["state"] == "deleting"
    wait_for_state(db["id"], "deleted")
    assert not runtime.instance_dir(tenant.instance_id).exists()
    bouncer = agent.pooler(agent.shard_of(db["id"]))
    assert db["database"] not in bouncer.database_names()
    assert db["user"] not in bouncer.auth_file.read_text()
    assert alice.call("GET", f"/databases/{db['id']}").status_code == 404
    assert alice.call("GET", "/databases").json() == {"databases": []}
    with pytest.raises(psycopg.OperationalError):
        connect(db["connection_string"])
    # The name is free again.
    create(alice, "doomed")


def test_a_failed_provisioning_leaves_nothing_behind(live, alice):
    from tenants.models import Plan

    # An operator's mistake: a connection limit postgres refuses to start with.
    Plan.objects.filter(name="free").update(connection_limit=300000)
    response = alice.call("POST", "/databases", {"name": "broken"})
    assert response.status_code == 500
    body = response.json()
    assert "could not be created" in body["error"]
    tenant = Tenant.objects.get(pk=body["database"]["id"])
    assert tenant.state == "failed"
    assert "max_connections" in tenant.state_reason
    runtime = agent.runtime_for(tenant)
    assert not runtime.instance_dir(tenant.instance_id).exists()
    bouncer = agent.pooler(agent.shard_of(tenant.pk))
    assert tenant.database_name not in bouncer.database_names()
    assert tenant.role_name not in bouncer.auth_file.read_text()
    assert not processes_of_uid(settings.DBAAS_TENANT_UID_BASE + tenant.pk)
    # The user sees why, and can delete it.
    got = alice.call("GET", f"/databases/{tenant.pk}").json()
    assert got["state"] == "failed" and got["state_reason"]
    assert alice.call("DELETE", f"/databases/{tenant.pk}").status_code == 202
    wait_for_state(tenant.pk, "deleted")
