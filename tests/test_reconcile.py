"""Crash-only: a killed instance is back at once (the activator's crash watch looks
twice a second; the reconcile task, every interval, is the backstop), and says why
it was restarted."""

import os
import signal
import time

import pytest
from django.conf import settings

from tenants.host import agent
from tenants.models import Event, Tenant
from tests.conftest import connect
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
