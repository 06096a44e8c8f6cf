"""What a tenant's credentials can and cannot do (issue: tenant safety)."""

import psycopg
import pytest
from django.conf import settings

from poolers import tls
from tests.conftest import connect
from tests.helpers import create

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def database(live, alice):
    return create(alice, "safe")


def _refused(conn, statement: str) -> str:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
        conn.execute(statement)
    return str(info.value)


def test_the_tenant_owns_its_database_but_is_no_superuser(database):
    with connect(database["connection_string"]) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        # CREATEDB: test and shadow databases on its own server (test_apps_just_work).
        assert row == (False, False, True, False, False)
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()[0]
        assert owner == database["user"]
        conn.execute("CREATE SCHEMA app")
        conn.execute("CREATE EXTENSION pgcrypto")  # trusted extensions are allowed
        assert conn.execute("SELECT length(gen_random_uuid()::text)").fetchone()[0] == 36


def test_the_tenant_cannot_escape_to_the_server(database):
    # Autocommit: ALTER SYSTEM and CREATE DATABASE refuse a transaction block
    # before they check privileges.
    with connect(database["connection_string"], autocommit=True) as conn:
        _refused(conn, "CREATE ROLE intruder")
        _refused(conn, "CREATE ROLE intruder SUPERUSER")
        _refused(conn, "ALTER SYSTEM SET shared_buffers = '1GB'")
        _refused(conn, "COPY (SELECT 1) TO PROGRAM 'id'")
        conn.execute("CREATE TEMP TABLE t (x text)")
        _refused(conn, "COPY t FROM PROGRAM 'cat /etc/passwd'")
        _refused(conn, "SELECT pg_read_file('/etc/passwd')")
        _refused(conn, "SELECT pg_ls_dir('.')")
        _refused(conn, "COPY (SELECT 1) TO '/data/out'")
        # Its own databases copy the templates, never the maintenance database.
        with pytest.raises(psycopg.errors.Error):
            conn.execute("CREATE DATABASE copy_of_postgres TEMPLATE postgres")
        _refused(conn, "ALTER ROLE CURRENT_USER SUPERUSER")


def test_wrong_passwords_are_refused_by_the_pooler(database):
    bad = database["connection_string"].replace(database["password"], "not-the-password")
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        connect(bad)


def test_plaintext_connections_are_refused(database):
    plain = database["connection_string"].replace("sslmode=verify-full", "sslmode=disable")
    with pytest.raises(psycopg.OperationalError):
        connect(plain)


def test_clients_verify_the_pooler_with_the_platforms_ca(database, client, tmp_path):
    """The string says verify-full: the pooler's certificate must chain to the CA
    the platform hands out and name the host the client asked for."""
    ca = tmp_path / "dbaas-ca.pem"
    ca.write_bytes(client.get("/api/v1/ca.pem").content)
    url = database["connection_string"]
    assert url.endswith("?sslmode=verify-full")
    with connect(f"{url}&sslrootcert={ca}") as conn:
        assert conn.pgconn.ssl_in_use
    # Another CA (an impostor's, made the same way): refused.
    other, _key = tls.ensure_ca(tmp_path / "impostor")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        connect(f"{url}&sslrootcert={other}")
    # The right CA, but not the name the certificate was made for: refused.
    host = f"@{settings.DBAAS_PUBLIC_HOST}:"
    renamed = url.replace(host, "@pooler.invalid:") + f"&hostaddr=127.0.0.1&sslrootcert={ca}"
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        connect(renamed)


def test_one_tenants_credentials_do_not_open_another(live, alice, bob):
    mine = create(alice, "mine")
    theirs = create(bob, "theirs")
    # alice's valid login, aimed at bob's database through the same pooler.
    crossed = mine["connection_string"].replace(f"/{mine['database']}?", f"/{theirs['database']}?")
    with pytest.raises(psycopg.OperationalError):
        connect(crossed)
    # ... and at the templates of her own instance, and the pooler's console.
    for other in ("template1", "template0", "pgbouncer"):
        url = mine["connection_string"].replace(f"/{mine['database']}?", f"/{other}?")
        with pytest.raises(psycopg.OperationalError):
            connect(url)
    # `postgres` is each owner's own server's maintenance database (tools create
    # databases from there): one name in the pooler, each user to its own server.
    for database in (mine, theirs):
        url = database["connection_string"].replace(f"/{database['database']}?", "/postgres?")
        with connect(url) as conn:
            names = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
            assert conn.execute("SELECT current_database()").fetchone()[0] == "postgres"
        assert {mine["database"], theirs["database"]} & names == {database["database"]}
    # The platform's own superuser cannot log in through the pooler.
    platform = mine["connection_string"].replace(f"//{mine['user']}:", "//platform:")
    with pytest.raises(psycopg.OperationalError):
        connect(platform)
    with connect(theirs["connection_string"]) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == theirs["user"]
