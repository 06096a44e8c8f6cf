"""poolers/ on its own: a real PgBouncer of the test's own, configured by the
PgBouncer class from plain values (no control plane, no tenant servers), as the
host agent configures the host's: it serves exactly the databases rendered, each
to its one owner, reloads what changes, and its admin console answers only on
the unix socket."""

import contextlib
import signal
import socket
import subprocess
from types import SimpleNamespace

import pytest
from django.conf import settings

from dbaas.env import pooler_user
from poolers import tls
from poolers.pgbouncer import ADMIN_USER, DatabaseEntry, Owner, PgBouncer, PoolerError, UserEntry
from poolers.scram import scram_secret
from tests import pgwire
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def entry(name: str, owner: str, servers) -> DatabaseEntry:
    # No server behind it: these tests end before PgBouncer would open one.
    return DatabaseEntry(
        name=name,
        dbname=name,
        socket_dir=servers,
        owner=owner,
        pool_size=2,
        max_connections=2,
    )


@pytest.fixture
def bouncer(tmp_path):
    """A PgBouncer under tmp_path with alice's and bob's databases rendered: the
    pooler, the directory its entries point at, the users."""
    root = tmp_path / "pgbouncer"
    root.mkdir()
    pooler = PgBouncer(
        root=root,
        listen_addr="127.0.0.1",
        listen_port=free_port(),
        service_user=pooler_user(),
        binary=settings.DBAAS_PGBOUNCER_BIN,
    )
    tls.ensure_ca(tmp_path / "pki")  # this machine's CA signs its certificate
    pooler.prepare(public_host="127.0.0.1")
    servers = tmp_path / "servers"
    servers.mkdir()
    users = [
        UserEntry("alice", scram_secret("alice's password")),
        UserEntry("bob", scram_secret("x")),
    ]
    pooler.write_config(
        [],
        [
            Owner(users[0], (entry("alice_db", "alice", servers),)),
            Owner(users[1], (entry("bob_db", "bob", servers),)),
        ],
    )
    process = subprocess.Popen(
        pooler.command(),
        user=pooler.service_user,  # as run_pooler runs it: its account and group only
        group=pooler.service_user,
        extra_groups=[],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(pooler.is_up, timeout=20)
        yield SimpleNamespace(pooler=pooler, servers=servers, users=users)
    finally:
        process.send_signal(signal.SIGINT)  # SIGTERM waits for every client
        process.wait(timeout=20)


def first_answer(pooler: PgBouncer, user: str, database: str) -> str:
    """What the pooler answers a StartupMessage with, over TLS: "sasl" (it will
    authenticate this user for this database) or its error message."""
    conn = pgwire.Connection("127.0.0.1", pooler.listen_port)
    try:
        conn.send(pgwire.startup(user, database))
        code, _ = conn.read_auth()
        return "sasl" if code == pgwire.AUTH_SASL else f"auth code {code}"
    except pgwire.ServerError as exc:
        return str(exc)
    finally:
        conn.close()


def test_it_serves_exactly_the_rendered_databases_and_reloads_changes(bouncer):
    pooler = bouncer.pooler
    assert {"alice_db", "bob_db"} <= pooler.database_names()
    alice, bob = bouncer.users
    pooler.write_config(
        [], [Owner(alice, (entry("alice_db", "alice", bouncer.servers),)), Owner(bob)]
    )
    pooler.reload()
    names = pooler.database_names()
    assert "alice_db" in names and "bob_db" not in names


def test_each_database_admits_only_its_owner_and_says_nothing_about_others(bouncer):
    pooler = bouncer.pooler
    assert first_answer(pooler, "alice", "alice_db") == "sasl"
    foreign = first_answer(pooler, "alice", "bob_db")
    unknown = first_answer(pooler, "alice", "no_such_db")
    assert foreign != "sasl" and unknown != "sasl"
    # The same refusal for someone else's database and for one that does not
    # exist: no way to learn which names exist.
    assert foreign.split(":")[-1] == unknown.split(":")[-1], (foreign, unknown)
    # The admin console is not reachable over TCP, whatever the password.
    assert first_answer(pooler, ADMIN_USER, "pgbouncer") != "sasl"


def test_the_admin_console_answers_on_the_unix_socket_and_the_advisory_is_mitigated(bouncer):
    pools = bouncer.pooler.pools()  # SHOW POOLS, as the host agent reads activity
    assert {database for database, _user in pools} <= {"alice_db", "bob_db", "pgbouncer"}
    exposure = bouncer.pooler.exposure()
    assert not exposure.exposed, exposure.message()


def admin_clients(pooler: PgBouncer) -> int:
    """The pooler's admin console sessions, as it counts them."""
    return sum(1 for row in pooler.admin("SHOW CLIENTS") if row["database"] == "pgbouncer")


def test_admin_sessions_are_kept_and_replaced_after_a_restart(bouncer, tmp_path):
    pooler = bouncer.pooler
    for _ in range(5):
        pooler.pools()
    # The host asks its poolers several times a second: not a login each time.
    assert admin_clients(pooler) == 1
    with contextlib.suppress(PoolerError):  # it answers by going away
        pooler.admin("SHUTDOWN")
    wait_until(lambda: not _listening(pooler.listen_port), timeout=20)
    again = subprocess.Popen(
        pooler.command(),
        user=pooler.service_user,
        group=pooler.service_user,
        extra_groups=[],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: _listening(pooler.listen_port), timeout=20)
        # The kept session is dead: replaced, and the command answered.
        assert "alice_db" in pooler.database_names()
        assert admin_clients(pooler) == 1
    finally:
        again.send_signal(signal.SIGINT)
        again.wait(timeout=20)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
