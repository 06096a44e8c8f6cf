"""Crash-only: a killed instance is back at once (the activator's crash watch is
told of each exit; the reconcile task, every interval, is the backstop), and says
why it was restarted."""

import os
import signal
import time

import pytest
from django.conf import settings

from tenants.host import agent
from tenants.host.crash_watch import CrashWatch
from tenants.models import Event, Tenant
from tests.conftest import connect, wait_until
from tests.helpers import create
from unikernel_images.runtimes.base import InstanceState

pytestmark = pytest.mark.timeout(120)


def test_a_killed_instance_is_restarted_with_its_data(live, alice):
    db = create(alice, "phoenix")
    with connect(db["connection_string"]) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('committed before the crash')")
        conn.commit()
    tenant = Tenant.objects.get(pk=db["id"])
    runtime = agent.runtime_for(tenant)
    status = runtime.status(tenant.instance_id)
    assert status.state is InstanceState.RUNNING and status.pid

    os.kill(status.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    deadline = killed_at + settings.DBAAS_RECONCILE_INTERVAL * 2 + 5
    while time.monotonic() < deadline:
        now = runtime.status(tenant.instance_id)
        if now.state is InstanceState.RUNNING and now.pid not in (None, status.pid):
            break
        time.sleep(0.02)
    healed_after = time.monotonic() - killed_at
    now = runtime.status(tenant.instance_id)
    assert now.state is InstanceState.RUNNING and now.pid != status.pid, "not restarted"
    # Half a second to notice, plus the time a start takes.
    assert healed_after < 3, healed_after
    restarts = Event.objects.filter(
        tenant=tenant, action="restart", actor__in=["crash-watch", "reconcile"]
    )
    while not restarts.exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # the event is written just after the start returns
    assert restarts.exists()
    assert "killed" in restarts.first().message  # no PANIC in its log: it was killed
    assert Tenant.objects.get(pk=tenant.pk).state_reason.startswith("restarted at ")
    with connect(db["connection_string"]) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("committed before the crash",)]


def test_the_crash_watch_follows_each_new_server_of_a_tenant(live, alice):
    """The watch holds a pidfd for each running server, and after a restart (its
    own or another's) one for the new server: each exit is told, none polled for."""
    db = create(alice, "lazarus")
    tenant = Tenant.objects.get(pk=db["id"])
    runtime, iid = agent.runtime_for(tenant), tenant.instance_id
    watch = CrashWatch()  # beside the activator's own: either may restart it

    def watching() -> int | None:
        watch.round()
        pid = runtime.status(iid).pid
        return pid if pid is not None and watch.watched().get(iid) == pid else None

    restarts = Event.objects.filter(tenant=tenant, action="restart")
    try:
        pids = [wait_until(watching, timeout=10)]
        for n in (1, 2):
            os.kill(pids[-1], signal.SIGKILL)
            pids.append(wait_until(lambda: (pid := watching()) not in (None, pids[-1]) and pid))
            # The restart is over (reported after the start) before its server is
            # killed in turn: one killed while it starts is a failed start, retried.
            wait_until(lambda n=n: restarts.count() == n, timeout=10)
        assert len(set(pids)) == 3
    finally:
        watch.close()
    with connect(db["connection_string"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
