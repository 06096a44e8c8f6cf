"""What the control plane sends a host about a tenant: its spec
(tenants/host/spec.py), built from the rows; and, for a host's reconcile, the list of
everything that host should hold."""

from typing import Any

from django.utils import timezone

from tenants.models import Host, Plan, Tenant, TenantDatabase


def plan_spec(plan: Plan) -> dict[str, Any]:
    return {
        "name": plan.name,
        "connection_limit": plan.connection_limit,
        "pool_size": plan.pool_size,
        "storage_limit_mb": plan.storage_limit_mb,
        "sleeps_when_idle": plan.sleeps_when_idle,
        "idle_timeout_seconds": plan.idle_timeout_seconds,
        "memory_limit_mb": plan.memory_limit_mb,
        "cpu_limit": plan.cpu_limit,
        "process_limit": plan.process_limit,
        "temp_file_limit_mb": plan.temp_file_limit_mb,
        "work_mem_max_mb": plan.work_mem_max_mb,
        "databases_per_server": plan.databases_per_server,
        "extension_list": plan.extension_list,
        "postgres_settings": dict(plan.postgres_settings),
    }


def spec_of(tenant: Tenant, databases: list[str] | None = None) -> dict[str, Any]:
    """The tenant as its host should know it (a JSON object for task arguments)."""
    if databases is None:
        databases = list(
            TenantDatabase.objects.filter(
                tenant=tenant, state=TenantDatabase.State.ACTIVE
            ).values_list("name", flat=True)
        )
    return {
        "pk": tenant.pk,
        "name": tenant.name,
        "slug": tenant.slug,
        "scram_secret": tenant.scram_secret,
        "runtime": tenant.runtime,
        "image": tenant.image,
        "plan": plan_spec(tenant.plan),
        "state": tenant.state,
        "storage_read_only": tenant.storage_read_only,
        "databases": sorted(databases),
    }


def backup_source(tenant: Tenant) -> dict[str, Any] | None:
    """For a tenant made from a backup: where the backup is, and the owner and
    database it holds (renamed to the tenant's)."""
    backup = tenant.restored_from
    if backup is None:
        return None
    return {
        "store": backup.store,
        "location": backup.location,
        "sha256": backup.sha256,
        "role": backup.tenant.role_name,
        "database": backup.tenant.database_name,
    }


def host_tenants(host: Host) -> list[dict[str, Any]]:
    """Everything `host` should hold (its tenants that are not deleted), each with
    how long it has been in its state and a password still to apply."""
    now = timezone.now()
    tenants = list(
        Tenant.objects.filter(host=host)
        .exclude(state=Tenant.State.DELETED)
        .select_related("plan", "restored_from__tenant")
    )
    made: dict[int, list[str]] = {}
    for tenant_id, name in TenantDatabase.objects.filter(
        tenant__in=tenants, state=TenantDatabase.State.ACTIVE
    ).values_list("tenant_id", "name"):
        made.setdefault(tenant_id, []).append(name)
    return [
        {
            "spec": spec_of(tenant, made.get(tenant.pk, [])),
            "state_age": (now - tenant.state_changed_at).total_seconds(),
            "pending_scram_secret": tenant.pending_scram_secret,
            "source": backup_source(tenant) if tenant.state == Tenant.State.PROVISIONING else None,
        }
        for tenant in tenants
    ]
