"""What a host has and uses, measured by its own agent for the operators' dashboard
and the users' storage figures: memory, disk, pooler connections, tenant sizes."""

import logging
import shutil

from django.utils import timezone

from dbaas.env import data_dir
from tenants.host import agent
from tenants.models import Host, Tenant

log = logging.getLogger(__name__)
# Whose storage limit is applied (a sleeping tenant's when it next starts).
LIMITED_STATES = (Tenant.State.RUNNING, Tenant.State.SLEEPING, Tenant.State.SUSPENDED)


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
    servers = sum(
        p.get(column, 0)
        for p in pools.values()
        for column in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
    )
    return clients, servers


def record(host: Host) -> int:
    """Measure this host and the size of each of its tenants; return how many tenants."""
    mem_total, mem_used = memory()
    disk = shutil.disk_usage(data_dir())
    clients: int | None
    servers: int | None
    try:
        clients, servers = pooler_connections(agent.pooler().pools())
    except Exception:  # a pooler that is down is shown as unknown, not as zero
        log.warning("pooler of %s did not answer; its connections are unknown", host)
        clients = servers = None
    Host.objects.filter(pk=host.pk).update(
        memory_total_bytes=mem_total,
        memory_used_bytes=mem_used,
        disk_total_bytes=disk.total,
        disk_used_bytes=disk.used,
        pooler_clients=clients,
        pooler_servers=servers,
        usage_at=timezone.now(),
    )
    tenants = list(
        Tenant.objects.filter(host=host)
        .exclude(state__in=[Tenant.State.DELETED, Tenant.State.PROVISIONING])
        .select_related("host", "plan")
    )
    for tenant in tenants:
        # What the plan's limit counts: the tenant's databases, not the WAL,
        # temporary files or templates (Runtime.data_usage).
        tenant.size_bytes = agent.runtime_for(tenant).data_usage(tenant.instance_id)
        over = tenant.size_bytes > tenant.plan.storage_limit_bytes
        if tenant.state in LIMITED_STATES and tenant.storage_read_only is not over:
            try:
                agent.storage_limit_apply(tenant, read_only=over)
            except Exception:
                log.exception("storage limit of %s not applied; next time", tenant)
    # Only this field: the rows may have changed state meanwhile.
    Tenant.objects.bulk_update(tenants, ["size_bytes"], batch_size=500)
    return len(tenants)
