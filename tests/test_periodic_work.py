"""Periodic work that does not grow with every tenant of a host at every tick
(docs/density.md): reconcile lists hold every tenant in a passing state and one
slice of the running and sleeping ones; the usage walk does not walk again the files
of a database asleep since its last walk (an hourly walk takes all); a pooler's
files are not rendered again while what they are made from is unchanged, but a
hand-edited file is put back."""

import os
import time
from pathlib import Path

import pytest
from django.conf import settings

from poolers import pgbouncer
from tenants import specs
from tenants.host import agent, priority, store, usage
from tenants.models import Tenant
from tests.helpers import (
    create,
    descendants,
    in_instance_data,
    put_to_sleep,
    reports_applied,
    wait_for_state,
)

pytestmark = pytest.mark.timeout(180)


def test_a_reconcile_list_holds_all_passing_tenants_and_one_slice_of_the_steady(
    live, alice, bob, settings
):
    dbs = [create(alice, f"steady{n}") for n in range(3)] + [create(bob, "passing")]
    passing = Tenant.objects.get(pk=dbs[-1]["id"])
    Tenant.objects.filter(pk=passing.pk).update(state=Tenant.State.SUSPENDED)
    host = passing.host
    steady = {db["id"] for db in dbs[:3]}
    # Two slices: each beat lists the passing tenant and half of the steady ones.
    settings.DBAAS_RECONCILE_SLICE = 2
    share = specs.reconcile_slice(host, time.time())
    assert share[1] == 2
    seen: set[int] = set()
    for remainder in range(2):
        listed = {item["spec"]["pk"] for item in specs.host_tenants(host, (remainder, 2))}
        assert passing.pk in listed
        assert listed - {passing.pk} == {pk for pk in steady if pk % 2 == remainder}
        seen |= listed
    assert seen == steady | {passing.pk}  # a full sweep in two beats
    # The beats take turns.
    later = specs.reconcile_slice(host, time.time() + settings.DBAAS_RECONCILE_INTERVAL)
    assert later == ((share[0] + 1) % 2, 2)


def test_the_usage_walk_leaves_a_database_asleep_since_the_last_walk(live, alice):
    db = create(alice, "dozing")
    tenant = Tenant.objects.get(pk=db["id"])
    runtime, iid = agent.runtime_for(tenant), tenant.instance_id
    put_to_sleep(alice, db)
    held = agent.store()
    usage.record()  # asleep since just now: walked
    reports_applied()
    measured = Tenant.objects.get(pk=tenant.pk).size_bytes
    assert measured
    # 5 MB more of its files behind its back (it sleeps: nothing of its own wrote).
    grow = (
        'for d in "$1"/base/*/; do n=$(basename "$d"); '
        'if [ "$n" -gt 16383 ]; then head -c 5000000 /dev/zero > "$d/999999999"; fi; done'
    )
    in_instance_data(runtime, iid, grow)
    usage.record()
    reports_applied()
    assert Tenant.objects.get(pk=tenant.pk).size_bytes == measured  # not walked again
    # The hourly walk takes every database.
    held.meta_set("usage_full_walk", time.time() - usage.FULL_WALK_EVERY - 1)
    usage.record()
    reports_applied()
    assert Tenant.objects.get(pk=tenant.pk).size_bytes >= measured + 5_000_000
    in_instance_data(runtime, iid, 'rm -f "$1"/base/*/999999999')


def test_a_pooler_file_edited_by_hand_is_put_back_by_the_next_sync(live, alice):
    db = create(alice, "tidy")
    bouncer = agent.pooler(agent.shard_of(db["id"]))
    written = bouncer.ini.read_text()
    assert not agent.pooler_sync()  # as it was: nothing rendered, nothing reloaded
    bouncer.ini.write_text(written.replace(f"{db['database']} =", "someone_else ="))
    assert agent.pooler_sync()
    assert bouncer.ini.read_text() == written
    assert db["database"] in bouncer.database_names()


def test_periodic_work_runs_niced_and_what_it_starts_does_not(live, alice):
    db = create(alice, "restarted")
    tenant = Tenant.objects.get(pk=db["id"])
    runtime, iid = agent.runtime_for(tenant), tenant.instance_id
    put_to_sleep(alice, db)
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0
    with priority.background():
        assert os.getpriority(os.PRIO_PROCESS, 0) == settings.DBAAS_BACKGROUND_NICENESS > 0
        # A reconcile repairing a tenant, say: the tenant's server starts from here.
        agent.instance_wake(iid, actor="test")
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0  # back after the block
    postmaster = runtime.status(iid).pid
    assert postmaster
    for pid in [postmaster, *descendants(postmaster)]:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(fields[16]) == 0, f"{pid} runs at niceness {fields[16]}"  # field 19


def test_what_a_process_kept_of_a_deleted_tenant_goes_with_it(live, alice):
    """The host's processes keep each tenant's parsed spec and pooler entries (a
    reconcile reads thousands per tick): not those of tenants gone since."""
    db = create(alice, "passing")
    tenant = Tenant.objects.get(pk=db["id"])
    iid, role = tenant.instance_id, tenant.database_name
    shard = agent.shard_of(db["id"])
    owners = agent._owners.setdefault(shard, {})

    def lines() -> dict:
        return pgbouncer._owner_lines[agent.pooler(shard).ini].by_user

    agent.store().all()
    agent.pooler_sync()
    assert iid in store._specs and iid in owners and role in lines()
    response = alice.call("DELETE", f"/databases/{db['id']}")
    assert response.status_code == 202, response.content
    wait_for_state(db["id"], "deleted")
    agent.store().all()
    agent.pooler_sync()
    assert iid not in store._specs and iid not in owners and role not in lines()
