"""Helpers the tests share: making databases and waiting for what the platform does
with them, through the API as a client would. Fixtures live in conftest.py."""

import os
import signal
import subprocess
import sys

from dbaas.env import BASE_DIR
from tenants.host import agent
from tenants.models import Tenant
from tests.conftest import wait_until
from unikernel_images.runtimes.base import InstanceState


def create(api, name: str) -> dict:
    response = api.call("POST", "/databases", {"name": name})
    assert response.status_code == 201, response.content
    return response.json()


def create_on_shard(api, name: str, shard: int) -> dict:
    """A database on the host's PgBouncer `shard` (tenant pk modulo the shards): the
    next tenant id is set to one of that shard first. For tests of what tenants of
    one PgBouncer can do to each other."""
    from django.conf import settings
    from django.db import connection

    shards = settings.DBAAS_POOLER_SHARDS
    with connection.cursor() as cur:
        cur.execute("SELECT pg_get_serial_sequence('tenants_tenant', 'id')")
        sequence = cur.fetchone()[0]
        cur.execute("SELECT nextval(%s)", [sequence])
        next_id = cur.fetchone()[0] + 1
        next_id += (shard - next_id) % shards
        cur.execute("SELECT setval(%s, %s)", [sequence, next_id - 1])
    db = create(api, name)
    assert agent.shard_of(db["id"]) == shard, db["id"]
    return db


def wait_for_state(tenant_id: int, state: str, timeout: float = 30) -> None:
    wait_until(lambda: Tenant.objects.get(pk=tenant_id).state == state, timeout=timeout)


def processes_of_uid(uid: int) -> list[int]:
    from pathlib import Path

    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if proc.stat().st_uid == uid:
                    pids.append(int(proc.name))
            except FileNotFoundError:
                continue
    return pids


def instance_state(tenant_id: int) -> InstanceState:
    tenant = Tenant.objects.get(pk=tenant_id)
    return agent.runtime_for(tenant).status(tenant.instance_id).state


def put_to_sleep(api, db: dict) -> None:
    response = api.call("POST", f"/databases/{db['id']}/sleep")
    assert response.status_code == 200, response.content
    assert response.json()["state"] == "sleeping"
    assert instance_state(db["id"]) is InstanceState.STOPPED


def wait_for(api, path: str, states: tuple[str, ...], timeout: float = 60) -> dict:
    """The object at `path` once its state is one of `states` (fails after timeout)."""

    def settled() -> dict | None:
        body = api.call("GET", path).json()
        return body if body["state"] in states else None

    return wait_until(settled, timeout=timeout)


def back_up(api, database: dict) -> dict:
    response = api.call("POST", f"/databases/{database['id']}/backups")
    assert response.status_code == 202, response.content
    backup = wait_for(
        api, f"/databases/{database['id']}/backups/{response.json()['id']}", ("done", "failed")
    )
    assert backup["state"] == "done", backup
    return backup


def restore(api, database: dict, backup: dict) -> dict:
    response = api.call("POST", f"/databases/{database['id']}/backups/{backup['id']}/restore")
    assert response.status_code == 202, response.content
    return wait_for(
        api, f"/databases/{database['id']}/restores/{response.json()['id']}", ("done", "failed")
    )


def run_django(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`code` run in a fresh Python process with `env` added to this one's: for what
    settings decide when a process starts (it imports Django itself)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=os.environ | {"DJANGO_SETTINGS_MODULE": "dbaas.settings"} | env,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


def kill_service(platform: dict, name: str) -> None:
    """SIGKILL one of the platform's processes (and its children), as a crash would."""
    service = platform[name]
    os.killpg(service.proc.pid, signal.SIGKILL)
    service.proc.wait()


def descendants(pid: int) -> list[int]:
    """Every process started from `pid`, however deep (honcho puts each of its
    processes in a session of its own, so a process group does not hold them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # The command may hold spaces and parentheses: the fields after it.
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started, as a machine that stops would."""
    for target in [pid, *descendants(pid)]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def spec_of(tenant_id: int):
    """The tenant's spec, as its host holds it (tenants/host/spec.py)."""
    from tenants import specs
    from tenants.host.spec import TenantSpec

    return TenantSpec.of_json(specs.spec_of(Tenant.objects.get(pk=tenant_id)))


def reports_applied(timeout: float = 10) -> None:
    """Wait until the control worker has taken every report the host sent (its queue
    empty), and a moment for the last ones to finish."""
    import time

    from dbaas.celery import queue_length

    wait_until(lambda: queue_length("control") == 0, timeout=timeout)
    time.sleep(0.3)


def measure(host) -> None:
    """What the host's usage beat does, at once, with the specs the control plane
    has now (a plan just changed, say): its tenants measured, their storage limits
    applied, the reports taken in."""
    from tenants import specs
    from tenants.host import usage
    from tenants.host.spec import TenantSpec

    held = agent.store()
    for item in specs.host_tenants(host):
        held.put(TenantSpec.of_json(item["spec"]))
    usage.record()
    reports_applied()


def in_instance_data(runtime, instance_id: str, script: str) -> None:
    """Run a shell script on a stopped instance's data as the instance sees it
    ($1: its data directory), as an operator's repair would."""
    data = str(runtime.data_dir(instance_id))
    subprocess.run(
        [*runtime.with_data(instance_id), "sh", "-c", script, "sh", data],
        check=True,
        timeout=30,
    )
