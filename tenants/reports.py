"""What hosts report (tenants/host/report.py), applied to the control plane's rows:
Celery tasks on the control queue, sent by name, each signed by its host's token
(tenants/host_identity.py: one that is not is dropped). A report on a tenant is applied
only if the tenant is on the host that sends it; a change of state only if it is
newer than the last one applied from that host (Tenant.host_seq), so that two
reports applied out of order by the control worker's two slots never leave the
older state standing."""

import datetime
from typing import Any

from celery import shared_task
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from tenants import moves
from tenants.errors import for_tenant
from tenants.host_identity import SignedReport, certificate_send
from tenants.lifecycle import event_record, host_register, tenant_transition
from tenants.models import Backup, Host, Move, Restore, Tenant, TenantDatabase

# What a host may set on a tenant's row (measured or decided there).
MEASURED = {"size_bytes", "storage_read_only", "last_active_at", "pooler_xact_count"}
# ...and along with a change of state.
TRANSITION_FIELDS = MEASURED | {"last_wake_ms"}
TRANSITION_INCREMENTS = {"wake_count", "wake_ms_total"}


def _tenant_on(host_name: str, tenant_pk: int | None) -> Tenant | None:
    if tenant_pk is None:
        return None
    return Tenant.objects.select_related("host").filter(pk=tenant_pk, host__name=host_name).first()


# Timestamps in reports are epoch seconds.
TIMES = {"started_at", "finished_at", "verified_at", "paused_at", "forward_until", "last_active_at"}


def _row_values(values: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    """What a report may set on a row (those of `allowed`), its timestamps as
    datetimes and an error as its owner may read it."""
    found = {}
    for name, value in values.items():
        if name not in allowed:
            continue
        if name in TIMES and value is not None:
            value = datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
        if name == "error" and value:
            value = for_tenant(value)[:5000]
        found[name] = value
    return found


@shared_task(base=SignedReport)
def transition(host_name: str, tenant_pk: int, seq: int, change: dict[str, Any]) -> bool:
    with transaction.atomic():
        newer = Tenant.objects.filter(pk=tenant_pk, host__name=host_name, host_seq__lt=seq).update(
            host_seq=seq
        )
        tenant = _tenant_on(host_name, tenant_pk) if newer else None
        if tenant is None:
            return False
        fields = _row_values(change.get("fields") or {}, TRANSITION_FIELDS)
        if change["to_state"] == Tenant.State.DELETED:
            fields["deleted_at"] = timezone.now()
        for name, step in (change.get("increments") or {}).items():
            if name in TRANSITION_INCREMENTS:
                fields[name] = F(name) + int(step)
        return tenant_transition(
            tenant=tenant,
            from_states=change["from_states"],
            to_state=change["to_state"],
            reason=change.get("reason") or "",
            actor=change.get("actor") or host_name,
            action=change.get("action") or "state",
            duration_ms=change.get("duration_ms"),
            **fields,
        )


@shared_task(base=SignedReport)
def event(
    host_name: str,
    tenant_pk: int | None,
    action: str,
    actor: str,
    message: str,
    duration_ms: int | None,
) -> None:
    host = Host.objects.filter(name=host_name).first()
    if host is None:
        return
    tenant = _tenant_on(host_name, tenant_pk)
    if tenant_pk is not None and tenant is None:
        return  # not (or no longer) on that host
    event_record(
        tenant=tenant,
        host=host,
        action=action[:40],
        actor=actor[:254],
        message=message,
        duration_ms=duration_ms,
    )


@shared_task(base=SignedReport)
def note(host_name: str, tenant_pk: int, text: str) -> None:
    Tenant.objects.filter(pk=tenant_pk, host__name=host_name).update(state_reason=for_tenant(text))


def _measured(host_name: str, tenant_pk: int, values: dict[str, Any]) -> int:
    fields = _row_values(values, MEASURED)
    if not fields:
        return 0
    return Tenant.objects.filter(pk=tenant_pk, host__name=host_name).update(**fields)


@shared_task(base=SignedReport)
def measured(host_name: str, tenant_pk: int, values: dict[str, Any]) -> None:
    _measured(host_name, tenant_pk, values)


@shared_task(base=SignedReport)
def measured_many(host_name: str, values: dict[str, dict[str, Any]]) -> int:
    """`measured` of many tenants (keys: their pks); how many rows it set."""
    with transaction.atomic():
        return sum(
            _measured(host_name, int(pk), each) for pk, each in values.items() if pk.isdigit()
        )


# What a host may set on a backup's or a restore's row (timestamps: epoch seconds).
BACKUP_FIELDS = {
    "state",
    "kind",
    "location",
    "size_bytes",
    "compressed_bytes",
    "sha256",
    "error",
    "started_at",
    "finished_at",
    "verified_at",
    "verified_ok",
    "verify_message",
}
RESTORE_FIELDS = {"state", "progress", "error", "finished_at"}


@shared_task(base=SignedReport)
def backup(host_name: str, backup_id: int, from_states: list[str], values: dict) -> bool:
    return bool(
        Backup.objects.filter(
            pk=backup_id, tenant__host__name=host_name, state__in=from_states
        ).update(**_row_values(values, BACKUP_FIELDS))
    )


@shared_task(base=SignedReport)
def restore(host_name: str, restore_id: int, from_states: list[str], values: dict) -> bool:
    return bool(
        Restore.objects.filter(
            pk=restore_id, tenant__host__name=host_name, state__in=from_states
        ).update(**_row_values(values, RESTORE_FIELDS))
    )


@shared_task(base=SignedReport)
def abandoned(host_name: str, kind: str, job_id: int, why: str) -> None:
    """A backup or restore its host took on and nobody is doing any more: failed."""
    rows = (Backup if kind == "backup" else Restore).objects.filter(
        pk=job_id, tenant__host__name=host_name, state="running"
    )
    tenant = Tenant.objects.filter(**{f"{kind}s": job_id}).first()
    if rows.update(state="failed", error=why, finished_at=timezone.now()) and tenant:
        event_record(tenant=tenant, action=kind, actor="sweep", message=f"#{job_id} failed: {why}")


@shared_task(base=SignedReport)
def secret_applied(host_name: str, tenant_pk: int, secret: str) -> None:
    """The password reset is done: the API sees it once its host has applied it."""
    tenant = _tenant_on(host_name, tenant_pk)
    if tenant is None:
        return
    with transaction.atomic():
        if Tenant.objects.filter(pk=tenant_pk, pending_scram_secret=secret).update(
            scram_secret=secret, pending_scram_secret=""
        ):
            event_record(tenant=tenant, action="password_applied", actor="worker")
            moves.forwards_refresh(tenant)


@shared_task(base=SignedReport)
def database(host_name: str, tenant_pk: int, name: str, made: bool) -> None:
    """A database its owner made (or dropped) on its server, routed by its host."""
    tenant = _tenant_on(host_name, tenant_pk)
    if tenant is None:
        return
    if made:
        TenantDatabase.objects.update_or_create(
            tenant=tenant, name=name, defaults={"state": TenantDatabase.State.ACTIVE}
        )
    else:
        TenantDatabase.objects.filter(tenant=tenant, name=name).delete()


@shared_task(base=SignedReport)
def host_usage(host_name: str, values: dict) -> None:
    Host.objects.filter(name=host_name).update(
        usage_at=timezone.now(), **{k: v for k, v in values.items() if k in Host.USAGE_FIELDS}
    )


@shared_task(base=SignedReport)
def registered(
    host_name: str,
    public_host: str,
    pooler_port: int,
    max_tenants: int,
    certificate_request: str = "",
    pooler_shards: int = 1,
) -> None:
    host = host_register(
        name=host_name,
        public_host=public_host,
        pooler_port=pooler_port,
        pooler_shards=pooler_shards,
        max_tenants=max_tenants,
    )
    if certificate_request:
        certificate_send(host, certificate_request)


MOVE_FIELDS = {
    "state",
    "error",
    "archive_location",
    "archive_sha256",
    "archive_bytes",
    "paused_at",
    "pause_ms",
    "forward_until",
}


@shared_task(base=SignedReport)
def move(host_name: str, move_id: int, from_states: list[str], values: dict) -> bool:
    """A step of a move (tenants/host/moves.py), from the host that did it: the
    tenant changes host when its data has left the source, gets its state back
    once it runs on the target (or, the move failed, on the source)."""
    row = Move.objects.select_related("tenant", "source", "target").filter(pk=move_id).first()
    if row is None or row.state not in from_states:
        return False
    expected = row.target if values.get("state") == "finishing" else row.source
    if expected.name != host_name:
        return False
    fields = _row_values(values, MOVE_FIELDS)
    state = fields.get("state")
    with transaction.atomic():
        if not Move.objects.filter(pk=move_id, state__in=from_states).update(
            finished_at=timezone.now() if state in ("done", "failed") else None, **fields
        ):
            return False
        tenant = row.tenant
        if state == "copying":
            # Its reports come from the target now, numbered from the start.
            Tenant.objects.filter(pk=tenant.pk).update(host=row.target, host_seq=0)
        elif state == "finishing":
            until = fields.get("forward_until")
            tenant_transition(
                tenant=tenant,
                from_states=[Tenant.State.MOVING],
                to_state=row.from_state,
                action="move",
                actor=row.requested_by,
                duration_ms=values.get("duration_ms"),
                reason=(
                    f"moved from host {row.source.name} to {row.target.name}; the connection "
                    f"string you had works until {until:%Y-%m-%d}, through the old host"
                ),
            )
        elif state == "done":
            event_record(
                tenant=tenant,
                host=row.source,
                action="moved",
                actor=row.requested_by,
                message=(
                    f"from {row.source.name} to {row.target.name}; clients waited "
                    f"{fields.get('pause_ms')} ms"
                ),
                duration_ms=fields.get("pause_ms"),
            )
        elif state == "failed":
            Tenant.objects.filter(pk=tenant.pk).update(host=row.source, host_seq=0)
            tenant_transition(
                tenant=tenant,
                from_states=[Tenant.State.MOVING],
                to_state=row.from_state,
                action="move_failed",
                actor=row.requested_by,
                reason=f"could not move to {row.target.name}: {fields.get('error')}; it stays",
            )
    return True
