"""What the control plane sends a host about a tenant: its spec
(tenants/host/spec.py), built from the rows; and, for a host's reconcile, the list of
everything that host should hold."""

from typing import Any

from django.conf import settings
from django.db.models import Q
from django.db.models.functions import Mod
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


# States a tenant stays in for long: reconciled a slice at a time.
STEADY = (Tenant.State.RUNNING, Tenant.State.SLEEPING)


def reconcile_slice(host: Host, now: float) -> tuple[int, int]:
    """Which slice of the host's steady tenants this beat's list holds: those whose
    pk modulo the number of slices (one per DBAAS_RECONCILE_SLICE of them) is the
    first number; the next beat the next slice."""
    steady = Tenant.objects.filter(host=host, state__in=STEADY).count()
    slices = max(1, -(-steady // settings.DBAAS_RECONCILE_SLICE))
    return int(now // settings.DBAAS_RECONCILE_INTERVAL) % slices, slices


def host_tenants(host: Host, share: tuple[int, int] = (0, 1)) -> list[dict[str, Any]]:
    """What `host` should hold (its tenants that are not deleted): all in a passing
    state, and of the steady ones those whose pk modulo share[1] is share[0]; each
    with how long it has been in its state and a password still to apply."""
    now = timezone.now()
    tenants = list(
        Tenant.objects.filter(host=host)
        .exclude(state=Tenant.State.DELETED)
        .annotate(share=Mod("id", share[1]))
        .filter(Q(share=share[0]) | ~Q(state__in=STEADY))
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
