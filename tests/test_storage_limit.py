"""The plan's storage limit holds: over it, what adds data is refused, in sessions
already open too and whatever the owner sets; what reads or frees data works; and
freeing space lifts it at the next measurement. What counts is the tenant's data,
not the write-ahead log."""

import psycopg
import pytest
from django.contrib.auth import get_user_model

from tenants.models import Event, Plan, Tenant
from tests.conftest import connect
from tests.helpers import create, measure

pytestmark = pytest.mark.timeout(240)


def _limit_mb(tenant: Tenant, mb: int) -> None:
    Plan.objects.filter(pk=tenant.plan_id).update(storage_limit_mb=mb)


def test_over_the_limit_writes_are_refused_and_freeing_space_lifts_it(live, client, alice):
    db = create(alice, "growing")
    tenant = Tenant.objects.get(pk=db["id"])
    opened_before = connect(db["connection_string"], autocommit=True)
    try:
        opened_before.execute("CREATE TABLE t (v text)")
        opened_before.execute(
            "INSERT INTO t SELECT repeat('x', 1000) FROM generate_series(1, 20000)"
        )
        measure(tenant.host)
        tenant.refresh_from_db()
        assert 20 << 20 < tenant.size_bytes < 40 << 20  # its database and the table
        _limit_mb(tenant, 20)
        measure(tenant.host)
        assert alice.call("GET", f"/databases/{db['id']}").json()["read_only"] is True

        # The session opened before the limit is held too, and cannot lift it.
        for statement in (
            "INSERT INTO t VALUES ('more')",
            "UPDATE t SET v = 'y' WHERE ctid = '(0,1)'",
            "CREATE TABLE u (v int)",
            "COPY t FROM STDIN",
            "WITH gone AS (DELETE FROM t WHERE false RETURNING v) INSERT INTO t SELECT * FROM gone",
        ):
            with pytest.raises(psycopg.errors.DiskFull, match="storage limit of 20 MB"):
                opened_before.execute(statement)
        opened_before.execute("SET default_transaction_read_only = off")
        with pytest.raises(psycopg.errors.DiskFull):
            opened_before.execute("INSERT INTO t VALUES ('more')")
        with pytest.raises(psycopg.Error):
            opened_before.execute("SET dbaas.storage_full = ''")
        with pytest.raises(psycopg.Error):
            opened_before.execute(f"ALTER DATABASE {db['database']} SET dbaas.storage_full = ''")
        # Reads and what frees data work, in new sessions as in old ones.
        with connect(db["connection_string"]) as fresh:
            assert fresh.execute("SELECT count(*) FROM t").fetchone() == (20000,)
            with pytest.raises(psycopg.errors.DiskFull):
                fresh.execute("INSERT INTO t VALUES ('more')")
        opened_before.execute("DELETE FROM t WHERE v = 'nothing'")
        opened_before.execute("DROP TABLE t")

        # The WAL still holds what was written; the data is gone: writable again.
        measure(tenant.host)
        assert alice.call("GET", f"/databases/{db['id']}").json()["read_only"] is False
        opened_before.execute("CREATE TABLE t (v text)")
        opened_before.execute("INSERT INTO t VALUES ('fits')")
    finally:
        opened_before.close()
    messages = list(
        Event.objects.filter(tenant=tenant, action="storage_limit").values_list(
            "message", flat=True
        )
    )
    assert len(messages) == 2 and "refused" in messages[-1]
    client.force_login(get_user_model().objects.get(email="alice@example.com"))
    assert b'id="read-only"' not in client.get(f"/databases/{db['id']}").content
    _limit_mb(tenant, 1)
    measure(tenant.host)
    assert b'id="read-only"' in client.get(f"/databases/{db['id']}").content
    assert b"read-only</span>" in client.get("/").content


def test_a_sleeping_database_over_the_limit_wakes_up_refusing_writes(live, alice):
    from tests.helpers import put_to_sleep

    db = create(alice, "sleeper")
    tenant = Tenant.objects.get(pk=db["id"])
    put_to_sleep(alice, db)
    _limit_mb(tenant, 1)  # less than an empty database
    measure(tenant.host)
    assert Tenant.objects.get(pk=tenant.pk).state == Tenant.State.SLEEPING  # not woken for it
    with connect(db["connection_string"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.errors.DiskFull):
            conn.execute("CREATE TABLE t (v int)")
