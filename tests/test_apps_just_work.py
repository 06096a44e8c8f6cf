"""What apps expect of a PostgreSQL server, through the connection string the platform
gives: the newest major the OS ships, every time zone, pgvector and PostGIS, and
only the extensions the plan allows."""

import psycopg
import pytest

from tenants.models import Account, Plan
from tests.conftest import connect
from tests.test_api_databases import create
from unikernel_images.image import newest_major

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def db(live, alice):
    return create(alice, "app")


def test_the_server_is_the_newest_major_the_os_ships(db, alice):
    with connect(db["connection_string"]) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()[0]
    assert version.startswith(newest_major())
    assert db["postgres_version"] == newest_major()
    assert alice.call("GET", f"/databases/{db['id']}").json()["postgres_version"] == newest_major()


def test_every_time_zone_of_the_os_works(db):
    with connect(db["connection_string"]) as conn:
        zones = conn.execute("SELECT count(*) FROM pg_timezone_names").fetchone()[0]
        assert zones > 500  # the image once carried UTC alone: 1 row
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


def test_the_owner_creates_pgvector_and_uses_an_hnsw_index(db):
    with connect(db["connection_string"]) as conn:
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


def test_the_owner_creates_postgis(db):
    with connect(db["connection_string"]) as conn:
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
    db = create(alice, "bare")
    with connect(db["connection_string"], autocommit=True) as conn:
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
