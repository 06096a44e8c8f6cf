"""What a host tells the control plane: by task name, on the control queue
(tenants/reports.py does the rest). A host never writes the control plane's
database; these are its only way to say what happened.

Each report names the host it comes from; the control plane applies a report on a
tenant only if the tenant is on that host. A change of state carries the tenant's
report number on this host (HostStore.set_state), so that reports the control
plane applies out of order never leave an older state standing.
"""

from typing import Any

from celery import current_app
from django.conf import settings

from tenants.host import identity

PREFIX = "tenants.reports."


def send_signed(task_name: str, *args: Any, **options: Any) -> None:
    """Task `task_name` on the control queue with this host's name first, signed
    with its token (tenants/host/identity.py): the control plane drops a report
    whose signature is not that host's."""
    args = (settings.DBAAS_HOST_NAME, *args)
    signature = identity.report_signature(identity.own_token().key, task_name, args)
    current_app.send_task(
        task_name,
        args,
        {"host_signature": signature},
        queue=settings.CELERY_TASK_DEFAULT_QUEUE,
        **options,
    )


def _send(name: str, *args: Any) -> None:
    send_signed(PREFIX + name, *args)


def transition(
    tenant_pk: int,
    seq: int,
    from_states: list[str],
    to_state: str,
    *,
    action: str,
    actor: str,
    reason: str = "",
    duration_ms: int | None = None,
    fields: dict[str, Any] | None = None,
    increments: dict[str, int] | None = None,
) -> None:
    """The tenant went from one of `from_states` to `to_state` here."""
    _send(
        "transition",
        tenant_pk,
        seq,
        {
            "from_states": from_states,
            "to_state": to_state,
            "action": action,
            "actor": actor,
            "reason": reason,
            "duration_ms": duration_ms,
            "fields": fields or {},
            "increments": increments or {},
        },
    )


def event(
    tenant_pk: int | None,
    action: str,
    actor: str,
    message: str = "",
    duration_ms: int | None = None,
) -> None:
    """Something operators should see in the tenant's (or, without one, the host's)
    events."""
    _send("event", tenant_pk, action, actor, message, duration_ms)


def note(tenant_pk: int, text: str) -> None:
    """What the owner should know of the tenant now (its state reason)."""
    _send("note", tenant_pk, text)


def measured(tenant_pk: int, values: dict[str, Any]) -> None:
    """What the host measured or decided of a tenant: size_bytes, storage_read_only,
    last_active_at (epoch seconds), pooler_xact_count."""
    _send("measured", tenant_pk, values)


def measured_many(values: dict[int, dict[str, Any]], chunk: int = 1000) -> None:
    """What `measured` says, of many tenants at once (a usage walk, an idle check):
    one report per `chunk` tenants, not one each, so that a host of thousands does
    not queue thousands of reports ahead of a state change."""
    items = [(str(pk), value) for pk, value in values.items()]
    for start in range(0, len(items), chunk):
        _send("measured_many", dict(items[start : start + chunk]))


def backup(backup_id: int, from_states: list[str], values: dict[str, Any]) -> None:
    """A backup's progress or outcome (timestamps as epoch seconds)."""
    _send("backup", backup_id, from_states, values)


def restore(restore_id: int, from_states: list[str], values: dict[str, Any]) -> None:
    _send("restore", restore_id, from_states, values)


def secret_applied(tenant_pk: int, secret: str) -> None:
    """The owner's new password works now, in its server and the pooler."""
    _send("secret_applied", tenant_pk, secret)


def database(tenant_pk: int, name: str, made: bool) -> None:
    """The owner made (CREATE DATABASE) or dropped a database on its server."""
    _send("database", tenant_pk, name, made)


def host_usage(values: dict[str, Any]) -> None:
    """What this host has and uses (memory, disk, pooler connections)."""
    _send("host_usage", values)


def registered(
    public_host: str,
    pooler_port: int,
    max_tenants: int,
    certificate_request: str = "",
    pooler_shards: int = 1,
) -> None:
    """This host has started: where clients reach it (its poolers: `pooler_shards`
    ports from `pooler_port`), how many databases it takes, and, if it has no
    certificate for that address yet, its certificate request (the control plane
    sends the certificate back: tasks.host_certificate)."""
    _send("registered", public_host, pooler_port, max_tenants, certificate_request, pooler_shards)


def abandoned(kind: str, job_id: int, why: str) -> None:
    """A backup or restore this host had taken on and nobody is doing any more."""
    _send("abandoned", kind, job_id, why)


def move(move_id: int, from_states: list[str], values: dict[str, Any]) -> None:
    """A step of a move of a tenant between hosts (tenants/host/moves.py)."""
    _send("move", move_id, from_states, values)
