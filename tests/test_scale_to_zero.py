"""Scale to zero: idle tenants sleep with no process, and wake on connect with the
connection held, through the real PgBouncer, activator, worker and beat."""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from tenants.host import agent
from tenants.models import Event, Plan, Tenant
from tests.conftest import Service, connect, wait_until
from tests.helpers import (
    create,
    in_instance_data,
    instance_state,
    put_to_sleep,
    reports_applied,
    wait_for_state,
)
from unikernel_images.runtimes.base import InstanceState

pytestmark = pytest.mark.timeout(180)


def starts_of(tenant_id: int) -> int:
    return Event.objects.filter(tenant_id=tenant_id, action="wake").count()


@pytest.fixture
def napper(live, alice):
    db = create(alice, "napper")
    with connect(db["connection_string"]) as conn:
        conn.execute("CREATE TABLE notes (body text)")
        conn.execute("INSERT INTO notes VALUES ('written before the nap')")
    return db


def test_an_idle_tenant_sleeps_and_wakes_on_connect(napper, alice):
    Plan.objects.filter(name="free").update(idle_timeout_seconds=1)
    # The beat task notices within a few intervals that nobody used it.
    wait_for_state(napper["id"], "sleeping", timeout=settings.DBAAS_RECONCILE_INTERVAL * 4 + 5)
    tenant = Tenant.objects.get(pk=napper["id"])
    assert instance_state(tenant.pk) is InstanceState.STOPPED
    if os.geteuid() == 0:
        from tests.helpers import processes_of_uid

        assert processes_of_uid(settings.DBAAS_TENANT_UID_BASE + tenant.pk) == []
    assert Event.objects.filter(tenant=tenant, action="sleep", actor="idle").exists()
    Plan.objects.filter(name="free").update(idle_timeout_seconds=300)

    started = time.monotonic()
    with connect(napper["connection_string"]) as conn:
        rows = conn.execute("SELECT body FROM notes").fetchall()
    assert rows == [("written before the nap",)]
    assert time.monotonic() - started < 5
    # The host decided the wake; the control plane hears of it right after.
    wait_for_state(tenant.pk, "running", timeout=10)
    tenant.refresh_from_db()
    assert tenant.wake_count == 1 and tenant.last_wake_ms is not None
    got = alice.call("GET", f"/databases/{tenant.pk}").json()
    assert got["state"] == "running" and got["last_active_at"] and got["wake_count"] == 1


def test_twenty_concurrent_first_connections_share_one_wake(napper, alice):
    put_to_sleep(alice, napper)
    results: list[object] = []
    barrier = threading.Barrier(20)

    def client() -> None:
        barrier.wait()
        try:
            with connect(napper["connection_string"]) as conn:
                results.append(conn.execute("SELECT count(*) FROM notes").fetchone()[0])
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=client) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [1] * 20
    # Reported by the host once it woke: then nothing more comes.
    wait_until(lambda: starts_of(napper["id"]) >= 1, timeout=10)
    reports_applied()
    assert starts_of(napper["id"]) == 1
    assert Tenant.objects.get(pk=napper["id"]).wake_count == 1


def test_a_wrong_password_does_not_wake_it(napper, alice):
    put_to_sleep(alice, napper)
    bad = napper["connection_string"].replace(napper["password"], "wrong-password")
    for _ in range(3):
        with pytest.raises(psycopg.OperationalError, match="authentication failed"):
            connect(bad)
    time.sleep(0.5)
    assert Tenant.objects.get(pk=napper["id"]).state == "sleeping"
    assert instance_state(napper["id"]) is InstanceState.STOPPED
    assert starts_of(napper["id"]) == 0


def test_connections_during_the_sleep_transition_are_served(napper):
    tenant = Tenant.objects.select_related("host", "plan").get(pk=napper["id"])
    outcome: list[str] = []
    sleeper = threading.Thread(
        target=lambda: outcome.append(agent.instance_sleep(tenant.instance_id, actor="test"))
    )
    sleeper.start()
    served = 0
    while sleeper.is_alive() or served < 3:
        with connect(napper["connection_string"]) as conn:
            assert conn.execute("SELECT count(*) FROM notes").fetchone() == (1,)
        served += 1
    sleeper.join()
    assert outcome and outcome[0] in ("slept", "busy")
    # Whatever the interleaving, the last connection found it awake and serving.
    with connect(napper["connection_string"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_connected_session_keeps_it_awake(napper, alice):
    with connect(napper["connection_string"]) as conn:
        conn.execute("SELECT 1")
        response = alice.call("POST", f"/databases/{napper['id']}/sleep")
        assert response.status_code == 409
        assert "in use" in response.json()["error"]
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (1,)
    assert Tenant.objects.get(pk=napper["id"]).state == "running"


def test_the_pooled_string_survives_a_sleep_and_wake(live, alice):
    db = create(alice, "serverless")
    assert db["pooled_connection_string"].endswith(f"/{db['database']}_pooled?sslmode=verify-full")
    # Transaction pooling: no server-side prepared statements on PgBouncer 1.18.
    with connect(db["pooled_connection_string"], prepare_threshold=None, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v int)")
        conn.execute("INSERT INTO t VALUES (1)")
        put_to_sleep(alice, db)
        # The same client connection, no reconnect: its next transaction wakes it.
        assert conn.execute("SELECT v FROM t").fetchall() == [(1,)]
    wait_for_state(db["id"], "running", timeout=10)


def test_explicit_wake_and_errors(napper, alice, bob):
    put_to_sleep(alice, napper)
    response = alice.call("POST", f"/databases/{napper['id']}/sleep")
    assert response.status_code == 409
    assert bob.call("POST", f"/databases/{napper['id']}/wake").status_code == 404
    response = alice.call("POST", f"/databases/{napper['id']}/wake")
    assert response.status_code == 200
    assert response.json()["state"] == "running"
    assert instance_state(napper["id"]) is InstanceState.RUNNING


# A repair comes with a reconcile, which runs niced (tenants/host/priority.py) and
# skips a beat while the previous one is still running: a few beats, not one.
REPAIRED_WITHIN = settings.DBAAS_RECONCILE_INTERVAL * 3 + 5


def _wait_consistent(tenant_id: int, timeout: float) -> str:
    """Wait until the row and the host agree; return the state they agree on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tenant = Tenant.objects.get(pk=tenant_id)
        status = instance_state(tenant_id)
        points_to_activator = agent.routes().points_to_activator(tenant.instance_id)
        if (
            tenant.state == "running"
            and status is InstanceState.RUNNING
            and not points_to_activator
        ):
            return "running"
        if tenant.state == "sleeping" and status is InstanceState.STOPPED and points_to_activator:
            return "sleeping"
        time.sleep(0.05)
    raise AssertionError(f"not consistent after {timeout} s: {tenant.state} / {status}")


def test_a_worker_dying_after_the_stop_heals(napper):
    """Crash point: the instance is stopped and routed to the activator, but the
    worker died before recording `sleeping`."""
    tenant = Tenant.objects.get(pk=napper["id"])
    route = agent.routes()
    route.point(tenant.instance_id, route.activator_dir(tenant.instance_id))
    agent.runtime_for(tenant).stop(tenant.instance_id)
    healed = _wait_consistent(tenant.pk, REPAIRED_WITHIN)
    assert healed == "running"
    with connect(napper["connection_string"]) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (1,)


def test_a_wake_dying_after_the_start_heals(napper, alice):
    """Crash point: the instance was started for a wake, but the activator died
    before routing to it and recording `running`."""
    put_to_sleep(alice, napper)
    tenant = Tenant.objects.select_related("plan").get(pk=napper["id"])
    agent.runtime_for(tenant).start(agent.instance_spec(tenant))
    assert _wait_consistent(tenant.pk, REPAIRED_WITHIN) == "running"
    with connect(napper["connection_string"]) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (1,)


def test_killing_the_activator_mid_wake_heals(napper, alice, platform):
    put_to_sleep(alice, napper)
    activator: Service = platform["activator"]
    failed = []

    def client() -> None:
        try:
            with connect(napper["connection_string"]) as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            failed.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.02)  # the wake is under way
    os.killpg(activator.proc.pid, signal.SIGKILL)
    thread.join(60)
    # The client got an answer, not a hang: in (the wake finished first), or told
    # its connection failed, which a client retries.
    assert not thread.is_alive(), "the client was left hanging"
    assert all(isinstance(exc, psycopg.OperationalError) for exc in failed), failed
    # A supervisor restarts it; the reconcile task makes row and host agree.
    replacement = Service("activator", [sys.executable, "manage.py", "run_activator"])
    platform["activator"] = replacement
    replacement.wait_for(lambda: replacement.log_contains("listening"))
    _wait_consistent(napper["id"], REPAIRED_WITHIN)
    with connect(napper["connection_string"]) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (1,)


def test_after_a_wake_the_activator_hands_its_connections_over(napper, alice, platform):
    """The server connections PgBouncer opened through the activator while the tenant
    woke are replaced by direct ones a few seconds later: the activator does not
    carry the tenant's traffic."""
    activator_pid = platform["activator"].proc.pid

    def activator_sockets() -> int:
        """The activator's connected unix sockets that it accepted on a tenant's
        route (they carry the bound path): PgBouncer's server connections spliced
        through it. Not its listening ones (one per sleeping tenant, opened and
        closed as tenants sleep and wake), nor those it opened itself (to a
        server, or its kept admin sessions to the poolers), which have no path."""
        accepted = set()
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            flags, state, inode = int(fields[3], 16), fields[5], fields[6]
            if not flags & 0x10000 and state == "03" and len(fields) > 7:
                accepted.add(inode)  # not listening; connected; with a path
        count = 0
        for fd in os.listdir(f"/proc/{activator_pid}/fd"):
            try:
                target = os.readlink(f"/proc/{activator_pid}/fd/{fd}")
            except FileNotFoundError:  # closed meanwhile
                continue
            count += target.startswith("socket:[") and target[8:-1] in accepted
        return count

    put_to_sleep(alice, napper)
    before = activator_sockets()
    with connect(napper["connection_string"]) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (1,)
    # PgBouncer keeps its server connection (idle, in its pool), spliced through
    # the activator: accepted on the tenant's route.
    spliced = activator_sockets()
    assert spliced >= before + 1
    deadline = time.monotonic() + settings.DBAAS_ACTIVATOR_HANDOFF_DELAY + 10
    while activator_sockets() > spliced - 1:
        assert time.monotonic() < deadline, "the activator still carries connections"
        time.sleep(0.1)
    with connect(napper["connection_string"]) as conn:  # straight to the instance now
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (1,)


def test_a_database_that_cannot_start_is_refused_at_once_and_the_operators_see_why(napper, alice):
    put_to_sleep(alice, napper)
    tenant = Tenant.objects.get(pk=napper["id"])
    runtime = agent.runtime_for(tenant)
    # postgres cannot start without it
    in_instance_data(runtime, tenant.instance_id, 'mv "$1/global/pg_control" "$1/global/hidden"')
    try:
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="could not be started"):
            connect(napper["connection_string"])
        assert time.monotonic() - started < 5  # not the pooler's 10 s login timeout
        event = wait_until(
            lambda: Event.objects.filter(tenant=tenant, action="wake_failed").first()
        )
        assert "pg_control" in event.message or "exited" in event.message
    finally:
        in_instance_data(
            runtime, tenant.instance_id, 'mv "$1/global/hidden" "$1/global/pg_control"'
        )

    # Once it can start again, the next connection wakes it.
    def woken() -> bool:
        try:
            with connect(napper["connection_string"]) as conn:
                return conn.execute("SELECT count(*) FROM notes").fetchone() == (1,)
        except psycopg.OperationalError:
            return False

    wait_until(woken, timeout=15)
