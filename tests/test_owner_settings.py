"""Settings an owner attaches to its database (ALTER DATABASE ... SET) bind its own
sessions, never the platform's: exports, backups and restores go on, and the
owner can undo its mistake from its server's maintenance database. What the
platform says to a tenant about a failure names no place on the host."""

import psycopg
import pytest
from django.conf import settings

from tenants.errors import for_tenant
from tenants.host import agent
from tenants.models import Tenant
from tests.conftest import connect
from tests.helpers import back_up, create, restore, wait_for
from unikernel_images import postgres_admin
from unikernel_images.image import SUPERUSER

pytestmark = pytest.mark.timeout(180)

# Each would break the platform's own sessions if they obeyed it.
HOSTILE_SETTINGS = [
    "local_preload_libraries = 'plpgsql'",  # no such file: every login fails
    "default_transaction_read_only = on",
    "statement_timeout = '1ms'",
    "search_path = public, pg_catalog",  # the owner's functions before the system's
]


def _maintenance(db: dict) -> str:
    return db["connection_string"].replace(f"/{db['database']}?", "/postgres?")


def test_the_owners_database_settings_do_not_bind_the_platform(live, alice):
    db = create(alice, "stubborn")
    with connect(db["connection_string"], autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v int)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
        backup = back_up(alice, db)
        for setting in HOSTILE_SETTINGS:
            conn.execute(f"ALTER DATABASE {db['database']} SET {setting}")
    # A new session that obeys them cannot even log in (the pooler still holds
    # the owner's earlier server connection, so this asks the server directly) ...
    tenant = Tenant.objects.get(pk=db["id"])
    socket_dir = agent.runtime_for(tenant).socket_dir(tenant.instance_id)
    with pytest.raises(psycopg.OperationalError, match="plpgsql"):
        psycopg.connect(host=str(socket_dir), user=SUPERUSER, dbname=db["database"]).close()
    # ... but the platform's do not: a logical export, a backup, a restore (whose
    # check logs into the restored database) all work.
    response = alice.call("POST", f"/databases/{db['id']}/backups", {"kind": "logical"})
    assert response.status_code == 202, response.content
    path = f"/databases/{db['id']}/backups/{response.json()['id']}"
    export = wait_for(alice, path, ("done", "failed"))
    assert export["state"] == "done", export
    assert back_up(alice, db)["state"] == "done"
    assert restore(alice, db, backup)["state"] == "done"
    # The restored data predates the settings; set them again and restore the
    # backup made with them: its check connection still gets in.
    with connect(_maintenance(db), autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {db['database']} SET local_preload_libraries = 'plpgsql'")
    with_settings = back_up(alice, db)
    assert restore(alice, db, with_settings)["state"] == "done"
    # The owner repairs it from the maintenance database of its own server.
    with connect(_maintenance(db), autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {db['database']} RESET ALL")
    with connect(db["connection_string"]) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 100


def test_errors_shown_to_tenants_name_no_host_paths(live, tmp_path):
    # A real error from the platform's side: its connection to an instance that
    # is not there names the socket's path on the host.
    with pytest.raises(psycopg.OperationalError) as info:
        postgres_admin.connect(tmp_path / "instance" / "run")
    raw = str(info.value)
    assert str(tmp_path) in raw
    shown = for_tenant(f"restore failed: {raw}")
    assert str(tmp_path) not in shown and "/instance/" not in shown
    assert ".s.PGSQL.5432" in shown  # what failed is still said
    for root in (settings.DATA_DIR, settings.BASE_DIR):
        assert str(root) not in for_tenant(f"could not open {root}/instances/t-1/data: denied")
