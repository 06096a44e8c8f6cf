"""What apps expect of a PostgreSQL server, through the connection string the platform
gives: the newest major the OS ships, every time zone, pgvector and PostGIS, and
only the extensions the plan allows."""

import os
import secrets
import signal
import sys
import threading
import time
import uuid

import psycopg
import pytest
from django.conf import settings
from django.db import connection as django_connection

from tenants.models import Account, Plan
from tests import pgwire
from tests.conftest import Service, connect
from tests.helpers import create
from unikernel_images.image import newest_major

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def database(live, alice):
    return create(alice, "app")


def test_the_server_is_the_newest_major_the_os_ships(database, alice):
    with connect(database["connection_string"]) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()[0]
    assert version.startswith(newest_major())
    assert database["postgres_version"] == newest_major()
    assert (
        alice.call("GET", f"/databases/{database['id']}").json()["postgres_version"]
        == newest_major()
    )


def test_every_time_zone_of_the_os_works(database):
    query = "SELECT name FROM pg_timezone_names"
    with django_connection.cursor() as cursor:  # the OS's own postgres, same tzdata
        cursor.execute(query)
        os_zones = {row[0] for row in cursor.fetchall()}
    with connect(database["connection_string"]) as conn:
        zones = {row[0] for row in conn.execute(query)}
        assert len(zones) > 400  # the image once carried UTC alone: 1 row
        # All of them but the host's own setting (localtime -> /etc/localtime).
        assert os_zones - zones <= {"localtime"}
        conn.execute("SET TIME ZONE 'Europe/Rome'")
        assert conn.execute("SHOW timezone").fetchone()[0] == "Europe/Rome"
        rome, new_york = conn.execute(
            "SELECT to_char(t AT TIME ZONE 'Europe/Rome', 'HH24:MI'),"
            "       to_char(t AT TIME ZONE 'America/New_York', 'HH24:MI')"
            "  FROM (SELECT timestamptz '2026-07-01 12:00:00+00' AS t) AS x"
        ).fetchone()
        assert (rome, new_york) == ("14:00", "08:00")
        assert (
            conn.execute("SELECT utc_offset FROM pg_timezone_names WHERE name = 'Asia/Kolkata'")
            .fetchone()[0]
            .total_seconds()
            == 5.5 * 3600
        )


def test_the_owner_creates_pgvector_and_uses_an_hnsw_index(database):
    with connect(database["connection_string"]) as conn:
        conn.execute("CREATE EXTENSION vector")
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, embedding vector(3))")
        conn.execute(
            "INSERT INTO items SELECT i, ARRAY[i, i * 2, i % 7]::vector"
            "  FROM generate_series(1, 500) AS i"
        )
        conn.execute("CREATE INDEX ON items USING hnsw (embedding vector_l2_ops)")
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN SELECT id FROM items ORDER BY embedding <-> '[10, 20, 3]' LIMIT 3"
            )
        )
        assert "items_embedding_idx" in plan
        nearest = conn.execute(
            "SELECT id FROM items ORDER BY embedding <-> '[10, 20, 3]' LIMIT 3"
        ).fetchall()
        assert nearest[0] == (10,)


def test_the_owner_creates_postgis(database):
    with connect(database["connection_string"]) as conn:
        conn.execute("CREATE EXTENSION postgis")
        distance = conn.execute(
            "SELECT ST_Distance('POINT(0 0)'::geometry, 'POINT(3 4)'::geometry)"
        ).fetchone()[0]
        assert distance == 5.0
        # Geography: the great-circle distance Rome-Milan, about 477 km.
        metres = conn.execute(
            "SELECT ST_Distance('SRID=4326;POINT(12.4964 41.9028)'::geography,"
            "                   'SRID=4326;POINT(9.19 45.4642)'::geography)"
        ).fetchone()[0]
        assert 470_000 < metres < 485_000


def test_an_extension_the_plan_does_not_list_is_refused(live, alice):
    Plan.objects.create(name="bare", extensions="pgcrypto")
    Account.objects.filter(user__email="alice@example.com").update(
        plan=Plan.objects.get(name="bare")
    )
    database = create(alice, "bare")
    with connect(database["connection_string"], autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not available") as info:
            conn.execute("CREATE EXTENSION vector")
        assert "pgcrypto" in (info.value.diag.message_hint or "")
        assert (
            conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
            == 0
        )
        conn.execute("CREATE EXTENSION pgcrypto")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE EXTENSION hstore")  # trusted by PostgreSQL, not by the plan


def _url(database: dict, name: str, pooled: bool = False) -> str:
    """`database`'s connection string, for the database `name` on its server."""
    base = database["connection_string"]
    return base.replace(f"/{database['database']}?", f"/{name}{'_pooled' if pooled else ''}?")


def test_a_database_the_owner_creates_is_reachable_at_once_in_both_modes(database):
    made = f"made_{secrets.token_hex(4)}"
    shadow = f"prisma_migrate_shadow_db_{uuid.uuid4()}"  # as Prisma names them
    with connect(database["connection_string"], autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{made}"')
        conn.execute(f'CREATE DATABASE "{shadow}"')
    with connect(_url(database, made)) as conn:  # the same login, at once
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            database["user"],
            made,
        )
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
        conn.commit()
    with connect(_url(database, made, pooled=True)) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)
    with connect(_url(database, shadow)) as conn:
        conn.execute("CREATE TABLE migration_check (id int)")
        conn.commit()
    # Dropped while the pooler still holds server connections to it: it lets go.
    with connect(database["connection_string"], autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{shadow}"')
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
        assert shadow not in names and made in names
    with pytest.raises(psycopg.OperationalError):
        connect(_url(database, shadow))
    # The database the platform made stays: it goes with the whole server.
    with (
        connect(_url(database, made), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="platform made"),
    ):
        conn.execute(f'DROP DATABASE "{database["database"]}"')


def test_databases_per_server_are_limited_by_the_plan(live, alice):
    Plan.objects.update(databases_per_server=2)
    database = create(alice, "few")
    with connect(database["connection_string"], autocommit=True) as conn:
        conn.execute("CREATE DATABASE few_one")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="plan allows 2"):
            conn.execute("CREATE DATABASE few_two")
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        assert "few_one" in names and "few_two" not in names
        conn.execute("DROP DATABASE few_one")
        conn.execute("CREATE DATABASE few_two")  # room again
    with connect(_url(database, "few_two")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_name_another_tenant_uses_is_refused_clearly(live, alice, bob):
    mine, theirs = create(alice, "mine"), create(bob, "theirs")
    with connect(theirs["connection_string"], autocommit=True) as conn:
        conn.execute("CREATE DATABASE analytics")
    with connect(mine["connection_string"], autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="taken on this host"):
            conn.execute("CREATE DATABASE analytics")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="lowercase letters"):
            conn.execute('CREATE DATABASE "Has Spaces"')
    # Bob's database is his alone: alice's login is refused there.
    with pytest.raises(psycopg.OperationalError):
        connect(_url(mine, "analytics"))


def test_prepared_statements_work_on_the_pooled_string_with_default_settings(database):
    """psycopg 3 prepares a statement after 5 runs; on transaction pooling the next
    run used to fail with `prepared statement "_pg3_0" does not exist`."""
    errors: list[str] = []

    def work(worker: int) -> None:
        try:
            with connect(database["pooled_connection_string"], autocommit=True) as conn:
                for i in range(40):
                    row = conn.execute("SELECT %s::int + %s::int", (worker, i)).fetchone()
                    assert row == (worker + i,)
                    conn.execute("SELECT count(*) FROM pg_class WHERE relpages >= %s", (i,))
        except Exception as exc:  # collected, asserted below
            errors.append(f"{worker}: {exc}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []


@pytest.mark.parametrize("pooled", [False, True], ids=["session", "transaction"])
def test_timeouts_given_at_connect_time_apply(database, pooled):
    url = database["pooled_connection_string"] if pooled else database["connection_string"]
    with connect(url, options="-c statement_timeout=200", autocommit=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("200ms",)
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(2)")
    # As startup parameters of their own, as node-postgres sends them.
    name = f"{database['database']}_pooled" if pooled else database["database"]
    conn = pgwire.Connection(settings.DBAAS_PUBLIC_HOST, database["port"])
    try:
        conn.login(
            database["user"],
            name,
            database["password"],
            statement_timeout="300",
            idle_in_transaction_session_timeout="1500",
        )
        assert conn.simple_query(
            "SELECT current_setting('statement_timeout'),"
            " current_setting('idle_in_transaction_session_timeout')"
        ) == [("300ms", "1500ms")]
        with pytest.raises(pgwire.ServerError, match="statement timeout"):
            conn.simple_query("SELECT pg_sleep(2)")
    finally:
        conn.close()
    # Other settings apps give at connect time, the same way.
    options = "-c search_path=app,public -c default_transaction_isolation=serializable"
    with connect(url, options=options, autocommit=True) as conn:
        for _ in range(3):  # transaction after transaction, in both modes
            with conn.transaction():
                assert conn.execute("SHOW search_path").fetchone() == ("app, public",)
                isolation = conn.execute("SHOW transaction_isolation").fetchone()
                assert isolation == ("serializable",)
    # Only for the client that asked: the next one, on the same server connections,
    # has the server's defaults.
    with connect(url, autocommit=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)


def test_the_plans_session_connections_are_served_and_the_next_is_refused_quickly(database):
    limit = Plan.objects.get(name="free").connection_limit
    held = [connect(database["connection_string"], autocommit=True) for _ in range(limit)]
    try:
        for conn in held:  # each has a server connection of its own, at once
            assert conn.execute("SELECT 1").fetchone() == (1,)
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="max_db_client_connections"):
            connect(database["connection_string"])
        assert time.monotonic() - started < 5
        # The transaction-mode string still takes clients.
        with connect(database["pooled_connection_string"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        for conn in held:
            conn.close()


def test_create_database_waits_for_a_registrar_that_is_restarting(database, platform):
    """While the registrar is down (killed, restarting) CREATE DATABASE waits for it
    instead of failing."""
    registrar: Service = platform["registrar"]
    os.killpg(registrar.proc.pid, signal.SIGKILL)
    registrar.proc.wait()  # gone, its sockets closed: not a connect racing its exit
    outcome: list[object] = []

    def create_database() -> None:
        try:
            with connect(database["connection_string"], autocommit=True) as conn:
                conn.execute("CREATE DATABASE while_restarting")
            outcome.append("created")
        except Exception as exc:  # asserted below
            outcome.append(exc)

    thread = threading.Thread(target=create_database)
    thread.start()
    try:
        time.sleep(1.5)
        assert thread.is_alive(), f"did not wait for the registrar: {outcome}"
    finally:
        # Whatever happened, the rest of the session needs a registrar.
        replacement = Service("registrar", [sys.executable, "manage.py", "run_registrar"])
        platform["registrar"] = replacement
        replacement.wait_for(lambda: replacement.log_contains("listening"))
    thread.join(30)
    assert outcome == ["created"]
    with connect(_url(database, "while_restarting")) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("while_restarting",)
