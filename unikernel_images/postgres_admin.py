"""SQL the platform runs on an instance as its superuser, over the instance's socket.

An owner can attach settings to its databases (`ALTER DATABASE ... SET`), and they
apply to every session there, the platform's too: a library to preload that does
not exist makes every login fail, a read-only default or a short timeout breaks a
restore's checks, a search_path with the owner's schema first would run the owner's
functions as the superuser. The platform's sessions set all of these back at
connect time, which outranks the database's settings (PLATFORM_SESSION_OPTIONS).
"""

import contextlib
import os
import subprocess
import time
from pathlib import Path

import psycopg
from psycopg import sql

from unikernel_images.image import SUPERUSER, TENANT_DATABASE, pg_tool
from unikernel_images.runtimes.base import ExportStream

PLATFORM_SESSION_OPTIONS = " ".join(
    f"-c {name}={value}"
    for name, value in {
        "local_preload_libraries": "",
        "search_path": "pg_catalog",
        "default_transaction_read_only": "off",
        "statement_timeout": "0",
        "lock_timeout": "0",
        "idle_in_transaction_session_timeout": "0",
        "client_min_messages": "warning",
    }.items()
)


def tool_env() -> dict[str, str]:
    """The environment for the PostgreSQL client programs the platform runs against
    an instance (pg_dump, pg_amcheck): its session options, and nothing of a
    PGOPTIONS or PGSERVICE from the operator's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return env | {"PGOPTIONS": PLATFORM_SESSION_OPTIONS}


def connect(socket_dir: Path, dbname: str = "postgres", patience: float = 0) -> psycopg.Connection:
    """The platform's session on an instance. A server that does not answer within
    10 s is tried again until `patience` seconds have passed: on a host of
    thousands, a burst of starts can hold the machine for several seconds, and a
    provisioning must not fail for that (bench/density.py saw one at 10,000)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return psycopg.connect(
                host=str(socket_dir),
                port=5432,
                user=SUPERUSER,
                dbname=dbname,
                autocommit=True,
                connect_timeout=10,
                options=PLATFORM_SESSION_OPTIONS,
            )
        except psycopg.errors.ConnectionTimeout:
            if time.monotonic() > deadline:
                raise


def bootstrap_owner(
    socket_dir: Path, *, role: str, database: str, secret: str, connection_limit: int
) -> None:
    """Create the tenant's owner role and hand it the image's pre-made database.

    The role is an ordinary one: no superuser, no CREATEROLE, no membership of
    pg_read_server_files or pg_execute_server_program. It may create databases on
    its own server (test and shadow databases); the platform's module has each
    one registered with the host (pg_module/dbaas.c).
    """
    # Only statements on the shared catalogs (roles, databases): a query would open
    # the maintenance database's catalogs (pg_proc, pg_statistic, ...), and each
    # file opened is copied into the instance's own layer (docs/density.md).
    with connect(socket_dir, patience=60) as conn:
        conn.execute(
            sql.SQL(
                "CREATE ROLE {} LOGIN NOSUPERUSER CREATEDB NOCREATEROLE NOREPLICATION "
                "NOBYPASSRLS CONNECTION LIMIT {} PASSWORD {}"
            ).format(sql.Identifier(role), sql.Literal(connection_limit), sql.Literal(secret))
        )
        # Renamed already, if it does not exist (a second attempt, say).
        with contextlib.suppress(psycopg.errors.InvalidCatalogName):
            conn.execute(
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(TENANT_DATABASE), sql.Identifier(database)
                )
            )
        # Its own server's maintenance database too: tools connect there to create
        # and drop databases (Django's test runner does).
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE postgres TO {}").format(sql.Identifier(role))
        )
        # PG 15: the public schema belongs to pg_database_owner, i.e. to this role.
        conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(database), sql.Identifier(role)
            )
        )


def set_role_secret(socket_dir: Path, *, role: str, secret: str) -> None:
    with connect(socket_dir) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(secret))
        )


def role_secret(socket_dir: Path, *, role: str) -> str | None:
    with connect(socket_dir) as conn:
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)
        ).fetchone()
    return row[0] if row else None


def rename_owner(
    socket_dir: Path, *, old_role: str, old_database: str, role: str, database: str, secret: str
) -> None:
    """Give a cluster restored from another tenant's backup this tenant's names."""
    with connect(socket_dir) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(old_database), sql.Identifier(database)
            )
        )
        conn.execute(
            sql.SQL("ALTER ROLE {} RENAME TO {}").format(
                sql.Identifier(old_role), sql.Identifier(role)
            )
        )
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(secret))
        )


def dump(socket_dir: Path, database: str, *, major: str) -> ExportStream:
    """pg_dump -Fc of one database, as a stream (the user's logical export), with the
    pg_dump of the server's major."""
    proc = subprocess.Popen(
        [
            pg_tool(major, "pg_dump"),
            "-h",
            str(socket_dir),
            "-U",
            SUPERUSER,
            "-d",
            database,
            "-Fc",
            "-w",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
        env=tool_env(),
    )
    return ExportStream(proc, "pg_dump")


def amcheck(socket_dir: Path, *, major: str) -> str:
    """pg_amcheck of every database (heap and btree indexes); raises on corruption."""
    proc = subprocess.run(
        [
            pg_tool(major, "pg_amcheck"),
            "-h",
            str(socket_dir),
            "-U",
            SUPERUSER,
            "--all",
            "--install-missing",
            "--heapallindexed",
            "-w",
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        cwd="/",
        env=tool_env(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pg_amcheck found problems: {(proc.stdout + proc.stderr)[-2000:]}")
    return "pg_amcheck: no corruption found"
