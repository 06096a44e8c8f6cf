"""The writes every layer makes, next to the models: a tenant's state change,
claimed atomically (only from the states named), an event in its timeline, and a
host's registration."""

from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from tenants.errors import for_tenant
from tenants.models import Event, Host, Tenant


def event_record(
    *,
    action: str,
    tenant: Tenant | None = None,
    host: Host | None = None,
    message: str = "",
    from_state: str = "",
    to_state: str = "",
    actor: str = "system",
    duration_ms: int | None = None,
) -> Event:
    return Event.objects.create(
        tenant=tenant,
        host=host if host is not None else getattr(tenant, "host", None),
        action=action,
        message=message[:5000],
        from_state=from_state,
        to_state=to_state,
        actor=actor,
        duration_ms=duration_ms,
    )


def tenant_transition(
    *,
    tenant: Tenant,
    from_states: Iterable[str],
    to_state: str,
    reason: str = "",
    actor: str = "system",
    action: str = "state",
    duration_ms: int | None = None,
    **fields: object,
) -> bool:
    """Move `tenant` to `to_state` if it is in one of `from_states`; False if it was not."""
    now = timezone.now()
    shown = for_tenant(reason)  # the event keeps the whole reason, for operators
    with transaction.atomic():
        for from_state in from_states:
            claimed = Tenant.objects.filter(pk=tenant.pk, state=from_state).update(
                state=to_state, state_reason=shown, state_changed_at=now, **fields
            )
            if claimed:
                event_record(
                    tenant=tenant,
                    action=action,
                    from_state=from_state,
                    to_state=to_state,
                    message=reason,
                    actor=actor,
                    duration_ms=duration_ms,
                )
                tenant.state, tenant.state_reason, tenant.state_changed_at = to_state, shown, now
                for name, value in fields.items():
                    if not hasattr(value, "resolve_expression"):  # F() + 1: not a value
                        setattr(tenant, name, value)
                return True
    return False


def host_register(
    *,
    name: str,
    public_host: str,
    pooler_port: int,
    pooler_shards: int = 1,
    max_tenants: int | None = None,
) -> Host:
    """Create or update a host's row (run by the host as it starts): where clients
    reach its poolers, and how many databases it takes (`max_tenants`, if given).
    Starting is a sign of life: it counts as a heartbeat."""
    values: dict[str, object] = {
        "public_host": public_host,
        "pooler_port": pooler_port,
        "pooler_shards": pooler_shards,
    }
    if max_tenants is not None:
        values["max_tenants"] = max_tenants
    host, created = Host.objects.get_or_create(
        name=name, defaults=values | {"heartbeat_at": timezone.now()}
    )
    ports = (
        f"{pooler_port}"
        if pooler_shards == 1
        else f"{pooler_port}-{pooler_port + pooler_shards - 1}"
    )
    if created:
        event_record(host=host, action="host_register", message=f"{public_host}:{ports}")
    elif (host.pooler_port, host.pooler_shards) != (pooler_port, pooler_shards):
        # Its databases' connection strings name other ports from now on: say so.
        event_record(
            host=host,
            action="host_register",
            message=f"poolers moved to {public_host}:{ports}: connection strings changed",
        )
    if not created:
        host_heard_from(host, "registered as it started", **values)
        host.refresh_from_db()
    return host


def host_heard_from(host: Host, how: str, **fields: object) -> None:
    """A sign of life from `host` (a heartbeat, its registration): alive now, with
    `fields` updated; a host that was down is up again, and says so."""
    Host.objects.filter(pk=host.pk).update(heartbeat_at=timezone.now(), down_since=None, **fields)
    if host.down_since is not None:
        event_record(
            host=host, action="host_up", message=f"{how}; down since {host.down_since:%H:%M:%S}"
        )
