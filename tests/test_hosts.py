"""Hosts as the control plane knows them: from their heartbeats (each host sends
one every DBAAS_HEARTBEAT_INTERVAL, saying whether its agent runs; without a live
agent for DBAAS_HOST_DOWN_AFTER, it is down), shown in the admin and on their
databases; /healthz speaks for the control plane alone."""

import time

from django.conf import settings

from tenants.admin import HostAdmin
from tenants.models import Event, Host
from tests.conftest import connect, wait_until, worker_service
from tests.helpers import create, kill_service


def this_host() -> Host:
    return Host.objects.get(name=settings.DBAAS_HOST_NAME)


def test_a_host_whose_agent_dies_is_down_in_time_and_serves_again(live, alice, platform):
    db = create(alice, "beating")
    # Its first heartbeat (registering set heartbeat_at, not the health).
    wait_until(lambda: this_host().health, timeout=30)
    assert this_host().health == {"pooler": "ok", "disk": "ok", "agent": "ok"}
    assert HostAdmin.status(None, this_host()) == "up"  # type: ignore[arg-type]
    kill_service(platform, "worker")
    killed = time.monotonic()
    try:
        wait_until(lambda: this_host().down_since is not None, timeout=60)
        noticed = time.monotonic() - killed
        limit = settings.DBAAS_HOST_DOWN_AFTER + 2 * settings.DBAAS_HEARTBEAT_INTERVAL + 2
        assert noticed < limit, noticed
        shown = alice.call("GET", f"/databases/{db['id']}").json()
        assert shown["available"] is False
        assert "has not answered since" in shown["state_reason"], shown
        assert shown["state"] == "running"  # nothing changed but what is shown
        assert HostAdmin.status(None, this_host()).startswith("down since")  # type: ignore[arg-type]
        assert Event.objects.filter(host=this_host(), action="host_down").count() == 1
        # The host itself still beats, and says what is wrong with it.
        wait_until(lambda: this_host().health.get("agent", "").startswith("error"), timeout=10)
    finally:  # its supervisor would start it again
        replacement = worker_service("worker", generation=5)
        platform["worker"] = replacement
        replacement.wait_for(lambda: replacement.log_contains(" ready."))
    wait_until(lambda: this_host().down_since is None, timeout=30)
    shown = alice.call("GET", f"/databases/{db['id']}").json()
    assert shown["available"] is True and shown["state_reason"] == ""
    assert Event.objects.filter(host=this_host(), action="host_up").count() == 1
    with connect(db["connection_string"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_healthz_speaks_for_the_control_plane(live, client):
    response = client.get("/healthz")
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "checks": {"controlplane": "ok", "redis": "ok"}}


def test_new_databases_go_only_to_hosts_that_are_alive(live, alice):
    from datetime import timedelta

    from django.utils import timezone

    long_ago = timezone.now() - timedelta(hours=1)
    # Empty, first by name, never heard from for an hour; and one marked down.
    silent = Host.objects.create(name="a-silent", public_host="10.255.0.1")
    Host.objects.filter(pk=silent.pk).update(created_at=long_ago)
    Host.objects.create(name="b-down", public_host="10.255.0.2", down_since=long_ago)
    db = create(alice, "placed")
    assert db["host"] == settings.DBAAS_PUBLIC_HOST
    # A host that starts again registers, which counts as a sign of life.
    from tenants import lifecycle

    lifecycle.host_register(name="a-silent", public_host="10.255.0.1", pooler_port=6432)
    assert Host.objects.get(name="a-silent").heartbeat_at > long_ago


def test_a_provisioning_on_a_host_that_stops_fails_with_the_reason(live, alice):
    from datetime import timedelta

    from django.utils import timezone

    from tenants import lifecycle, services
    from tenants.models import Account, Tenant

    lifecycle.host_register(name="a-gone", public_host="10.255.0.3", pooler_port=6432)
    account = Account.objects.get(user__email="alice@example.com")
    # Placed there (alive, empty, first by name); its agent never picks the work up.
    tenant, _password = services.tenant_create(account=account, name="lost", actor="test")
    assert tenant.host.name == "a-gone" and tenant.state == "provisioning"
    Host.objects.filter(name="a-gone").update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert services.hosts_mark_down() == 1  # this session's host answers: only a-gone
    tenant.refresh_from_db()
    assert tenant.state == "failed"
    assert "its host a-gone stopped before making it" in tenant.state_reason
    shown = alice.call("GET", f"/databases/{tenant.pk}").json()
    assert shown["state"] == "failed" and shown["available"] is False
    assert Tenant.objects.filter(host__name=settings.DBAAS_HOST_NAME).count() == 0


def test_a_host_discards_what_it_holds_of_a_failed_database(live, alice):
    from tenants.host import agent
    from tenants.models import Tenant
    from unikernel_images.runtimes.base import InstanceState

    db = create(alice, "leftover")
    tenant = Tenant.objects.get(pk=db["id"])
    # Failed by the control plane while this host could not clean up.
    Tenant.objects.filter(pk=tenant.pk).update(state="failed")
    runtime = agent.runtime_for(tenant)
    wait_until(lambda: runtime.status(tenant.instance_id).state is InstanceState.MISSING, 30)
    assert tenant.database_name not in agent.pooler(agent.shard_of(tenant.pk)).database_names()
