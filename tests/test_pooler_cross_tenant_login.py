"""CVE-2026-107350: on PgBouncer 1.17.0 to 1.26.0 a client that knows one user's
password could log in as another SCRAM user by sending a second StartupMessage in
the middle of a SCRAM exchange begun against a database PgBouncer does not know.

These tests speak the wire protocol by hand (tests/pgwire.py) to the pooler the
platform runs, as the attacker would, and check that every variant is refused and
that nobody's own logins suffer for it. Attacker and victim are on the same one of
the host's PgBouncers (on different ones the attacker's user is not even known
where the victim's database is). See docs/security.md.
"""

import itertools
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from poolers import advisories
from poolers.pgbouncer import ADMIN_USER
from tenants.host import agent
from tenants.models import Tenant
from tests import pgwire
from tests.conftest import connect
from tests.helpers import create, create_on_shard, spec_of
from unikernel_images.runtimes.base import InstanceState

pytestmark = pytest.mark.timeout(300)

# What the first StartupMessage may name besides the attacker's own user.
UNKNOWN = "no_such_database"
TOO_LONG = "n" * 70  # PgBouncer keeps 63 bytes of a database name
ORDERS = ("stepwise", "pipelined", "before-scram")


# The port of the PgBouncer that attacker and victim share (set by each test).
PORT = {"port": settings.DBAAS_PGBOUNCER_PORT}


def _open() -> pgwire.Connection:
    return pgwire.Connection(settings.DBAAS_PUBLIC_HOST, PORT["port"])


def _victim_and_attacker(alice, bob, names: tuple[str, str]) -> tuple[dict, dict]:
    """Bob's database, and Alice's on the same PgBouncer as Bob's."""
    theirs = create(bob, names[0])
    mine = create_on_shard(alice, names[1], agent.shard_of(theirs["id"]))
    assert mine["port"] == theirs["port"]
    PORT["port"] = theirs["port"]
    return theirs, mine


def whoami(conn: pgwire.Connection) -> str:
    user, database = conn.simple_query("select current_user, current_database()")[0]
    return f"{user}/{database}"


def login(user: str, database: str, password: str) -> str:
    """An honest SCRAM login by hand: the control that the attack code itself works."""
    conn = _open()
    try:
        conn.login(user, database, password)
        return whoami(conn)
    finally:
        conn.close()


def attack(
    *, user: str, password: str, first_db: str, target_user: str, target_db: str, order: str
) -> str:
    """Play the published sequence; return "refused: <why>" or who it got in as."""
    conn = _open()
    scram = pgwire.Scram(password)
    try:
        conn.send(pgwire.startup(user, first_db))
        conn.read_auth()  # AuthenticationSASL, if the pooler lets the exchange begin
        if order == "before-scram":
            conn.send(pgwire.startup(target_user, target_db))
            conn.read_auth()
            conn.send(pgwire.sasl_initial_response(scram.client_first()))
            _, server_first = conn.read_auth()
            conn.send(pgwire.sasl_response(scram.client_final(server_first.decode())))
        else:
            conn.send(pgwire.sasl_initial_response(scram.client_first()))
            _, server_first = conn.read_auth()  # SASLContinue, with the attacker's salt
            final = pgwire.sasl_response(scram.client_final(server_first.decode()))
            if order == "pipelined":  # steps 4 and 5 in one write
                conn.send(pgwire.startup(target_user, target_db), final)
                conn.read_auth()
            else:
                conn.send(pgwire.startup(target_user, target_db))
                conn.read_auth()
                conn.send(final)
        pgwire.finish_login(conn, scram)
        if target_db == "pgbouncer":
            return f"logged in to the admin console as {target_user}"
        return f"logged in as {whoami(conn)}"
    except (pgwire.ServerError, pgwire.Closed, AssertionError) as exc:
        return f"refused: {exc}"
    finally:
        conn.close()


def _keep_server_connections(db: dict) -> None:
    """Use both of the target's strings so its pools hold idle server connections,
    the condition under which the attack used to succeed."""
    for url in (db["connection_string"], db["pooled_connection_string"]):
        with connect(url, autocommit=True) as conn:
            conn.execute("select 1")


def test_it_refuses_every_variant_of_the_second_startup_message(live, alice, bob):
    theirs, mine = _victim_and_attacker(alice, bob, ("victim", "attacker"))
    me = {"user": mine["user"], "password": mine["password"]}
    # The control: the hand-made SCRAM of these tests logs in where it should.
    assert login(mine["user"], mine["database"], mine["password"]) == (
        f"{mine['user']}/{mine['database']}"
    )
    _keep_server_connections(theirs)

    targets = {
        "victim's database": (theirs["user"], theirs["database"]),
        "victim's _pooled alias": (theirs["user"], f"{theirs['database']}_pooled"),
        "the pooler's admin console": (ADMIN_USER, "pgbouncer"),
    }
    first_databases = {
        "unknown name": UNKNOWN,
        "name over 63 bytes": TOO_LONG,
        "the victim's existing database": theirs["database"],
        "the admin console's database": "pgbouncer",
        "the shared maintenance database": "postgres",
    }
    outcomes = {}
    for (target, (t_user, t_db)), (first, first_db), order in itertools.product(
        targets.items(), first_databases.items(), ORDERS
    ):
        outcome = attack(**me, first_db=first_db, target_user=t_user, target_db=t_db, order=order)
        outcomes[f"{target}, first naming {first}, {order}"] = outcome
    got_in = {case: outcome for case, outcome in outcomes.items() if "refused" not in outcome}
    assert not got_in, "\n".join(f"{case}: {outcome}" for case, outcome in got_in.items())

    # The refusals come before any SCRAM exchange, with one message whether the
    # name is someone else's or nobody's, so they tell nobody which names exist.
    first_answers = set()
    for first_db in (UNKNOWN, TOO_LONG, theirs["database"]):
        conn = _open()
        try:
            conn.send(pgwire.startup(mine["user"], first_db))
            with pytest.raises(pgwire.ServerError) as refused:
                conn.read_auth()
            first_answers.add(str(refused.value))
        finally:
            conn.close()
    assert len(first_answers) == 1, first_answers

    # Neither side's own logins are disturbed, through fresh server connections too.
    agent.pooler_reconnect(spec_of(theirs["id"]))
    for db in (mine, theirs):
        for url in (db["connection_string"], db["pooled_connection_string"]):
            with connect(url) as conn:
                assert conn.execute("select current_user").fetchone()[0] == db["user"]
    assert login(theirs["user"], theirs["database"], theirs["password"]) == (
        f"{theirs['user']}/{theirs['database']}"
    )


def test_the_admin_console_is_not_reachable_over_tcp_even_with_its_password(platform):
    password = agent.pooler().admin_password
    url = (
        f"host={settings.DBAAS_PUBLIC_HOST} port={settings.DBAAS_PGBOUNCER_PORT} "
        f"dbname=pgbouncer user={ADMIN_USER} sslmode=require"
    )
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, password=password, connect_timeout=10)
    # ... while the host agent's way in, the unix socket, works.
    assert agent.pooler().is_up()


def test_the_pooler_reports_the_advisory_as_mitigated(platform):
    bouncer = agent.pooler()
    exposure = bouncer.exposure()
    assert exposure.mitigated
    assert not exposure.exposed
    log = platform["pooler"].log_path.read_text()
    assert "CVE-2026-107350" in log if exposure.affected else "not affected" in log
    assert "NOT in place" not in log


@pytest.mark.parametrize(
    ("hba_rule", "confined"),
    [
        ('hostssl "app_x1","app_x1_pooled" "app_x1" 0.0.0.0/0 scram-sha-256', True),
        ("hostssl all all 0.0.0.0/0 scram-sha-256", False),
        ('hostssl all "app_x1" 0.0.0.0/0 scram-sha-256', False),
        ("hostssl sameuser all 0.0.0.0/0 scram-sha-256", False),
        ("hostssl @names all 0.0.0.0/0 scram-sha-256", False),
        ("host all all 0.0.0.0/0 reject", True),
    ],
)
def test_it_tells_a_confining_hba_file_from_one_that_is_not(tmp_path: Path, hba_rule, confined):
    hba = tmp_path / "hba.conf"
    hba.write_text(f"local pgbouncer admin scram-sha-256\n{hba_rule}\n")
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(f"[databases]\n[pgbouncer]\nauth_type = hba\nauth_hba_file = {hba}\n")
    assert advisories.logins_confined(ini, hba) is confined
    ini.write_text(f"[pgbouncer]\nauth_type = scram-sha-256\nauth_hba_file = {hba}\n")
    assert advisories.logins_confined(ini, hba) is False


def test_it_warns_about_an_affected_pgbouncer_without_the_mitigation(tmp_path: Path):
    ini, hba = tmp_path / "pgbouncer.ini", tmp_path / "hba.conf"
    ini.write_text("[pgbouncer]\nauth_type = scram-sha-256\n")
    exposure = advisories.exposure((1, 18, 0), ini, hba)
    assert exposure.exposed
    assert exposure.message().startswith("WARNING: PgBouncer 1.18.0 is affected by CVE-2026-107350")
    assert not advisories.exposure((1, 26, 1), ini, hba).exposed
    assert not advisories.exposure((1, 16, 1), ini, hba).exposed
    assert advisories.parse_version("PgBouncer 1.24.1\nlibevent 2.1.12-stable") == (1, 24, 1)


def test_another_tenants_valid_login_neither_opens_nor_wakes_a_database(live, alice, bob):
    from tests.helpers import instance_state, put_to_sleep

    theirs, mine = _victim_and_attacker(alice, bob, ("sleeper", "prowler"))
    put_to_sleep(bob, theirs)
    for alias in (theirs["database"], f"{theirs['database']}_pooled"):
        crossed = mine["connection_string"].replace(f"/{mine['database']}?", f"/{alias}?")
        for _ in range(3):
            with pytest.raises(
                psycopg.OperationalError, match="login rejected|no authentication method"
            ):
                connect(crossed)
    tenant = Tenant.objects.get(pk=theirs["id"])
    assert (tenant.state, tenant.wake_count) == (Tenant.State.SLEEPING, 0)
    assert instance_state(theirs["id"]) is InstanceState.STOPPED
    # Its owner still wakes it by connecting.
    with connect(theirs["connection_string"]) as conn:
        assert conn.execute("select current_user").fetchone()[0] == theirs["user"]
