"""What a host has and uses, measured by its own agent for the operators' dashboard
and the users' storage figures: memory, disk, pooler connections, tenant sizes; and
the storage limit, applied here from each tenant's size and plan."""

import logging
import shutil
import time

from dbaas.env import data_dir
from poolers.pgbouncer import SERVER_COLUMNS
from tenants.host import agent, report
from tenants.host.spec import RUNNING, SLEEPING, SUSPENDED

log = logging.getLogger(__name__)
# Whose storage limit is applied (a sleeping tenant's when it next starts).
LIMITED_STATES = (RUNNING, SLEEPING, SUSPENDED)
# Every database's files are walked at least this often (seconds); in between,
# only those that were awake since the last walk.
FULL_WALK_EVERY = 3600


def memory() -> tuple[int, int]:
    """(total, used) bytes of RAM, used meaning not available to new work."""
    fields = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            name, value = line.split(":", 1)
            fields[name] = int(value.split()[0]) * 1024
    return fields["MemTotal"], fields["MemTotal"] - fields["MemAvailable"]


def pooler_connections(pools: dict[tuple[str, str], dict]) -> tuple[int, int]:
    """(clients, servers) across every database of the host's pooler."""
    clients = sum(p.get("cl_active", 0) + p.get("cl_waiting", 0) for p in pools.values())
    servers = sum(p.get(column, 0) for p in pools.values() for column in SERVER_COLUMNS)
    return clients, servers


def record() -> int:
    """Measure this host and the size of each of its tenants (reported to the control
    plane), apply the storage limits; return how many tenants."""
    mem_total, mem_used = memory()
    disk = shutil.disk_usage(data_dir())
    clients: int | None
    servers: int | None
    try:
        clients, servers = pooler_connections(agent.pooler_pools())
    except Exception:  # a pooler that is down is shown as unknown, not as zero
        log.warning("this host's pooler did not answer; its connections are unknown")
        clients = servers = None
    report.host_usage(
        {
            "memory_total_bytes": mem_total,
            "memory_used_bytes": mem_used,
            "disk_total_bytes": disk.total,
            "disk_used_bytes": disk.used,
            "pooler_clients": clients,
            "pooler_servers": servers,
        }
    )
    held, now = agent.store(), time.time()
    tenants = held.all(LIMITED_STATES)
    # A database asleep since before the last walk began has the size that walk
    # found (it measured it after it fell asleep): not walked again (10,000
    # sleeping databases' files), but once an hour all are.
    last, last_full = held.meta("usage_walk"), held.meta("usage_full_walk")
    unchanged: set[str] = set()
    if last is not None and last_full is not None and now - last_full < FULL_WALK_EVERY:
        unchanged = held.asleep_since(last)
    else:
        held.meta_set("usage_full_walk", now)
    held.meta_set("usage_walk", now)
    known = held.metas("size:") if unchanged else {}
    sizes: dict[int, dict] = {}
    for tenant, _state in tenants:
        iid = tenant.instance_id
        size = int(known[iid]) if iid in unchanged and iid in known else None
        if size is None:
            # What the plan's limit counts: the tenant's databases, not the WAL,
            # temporary files or templates (Runtime.data_usage).
            size = agent.runtime_for(tenant).data_usage(iid)
            sizes[tenant.pk] = {"size_bytes": size}
            held.meta_set(f"size:{iid}", size)
        over = size > tenant.plan.storage_limit_bytes
        if tenant.storage_read_only is not over:
            try:
                agent.storage_limit_apply(tenant, read_only=over)
            except Exception:
                log.exception("storage limit of %s not applied; next time", tenant.instance_id)
    report.measured_many(sizes)
    return len(tenants)
