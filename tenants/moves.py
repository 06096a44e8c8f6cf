"""Moving databases between hosts, the control plane's side: claiming a move, and
draining a host (every database off it, one at a time). The hosts do the work
(tenants/host/moves.py); here a move is claimed, queued on its source and waited
for."""

import time
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone

from tenants import selectors, specs
from tenants.backups import backup_ref
from tenants.dispatch import send_after_commit
from tenants.errors import Conflict, Unavailable
from tenants.host import tasks as host_tasks
from tenants.lifecycle import event_record, tenant_transition
from tenants.models import Backup, Host, Move, Tenant

State = Tenant.State
# The states a database is moved in; any other is left where it is (and said so).
MOVABLE = (State.RUNNING, State.SLEEPING)
# How long one move may take before the caller stops waiting (it goes on, or the
# source's reconcile puts it back: tenants/host/tasks.py).
MOVE_WAIT_SECONDS = 300
# A move under way for longer than this was abandoned (each step is a task, which
# may run CELERY_TASK_TIME_LIMIT at most).
STUCK_AFTER = timedelta(seconds=2 * (settings.CELERY_TASK_TIME_LIMIT + 30))


def move_start(*, tenant: Tenant, target: Host, actor: str) -> Move:
    """Claim the tenant for a move to `target` and queue its first step."""
    if target.pk == tenant.host_id:
        raise Conflict(f"{tenant.name} is on {target.name} already")
    if target.down_since is not None:
        raise Unavailable(f"host {target.name} is down")
    with transaction.atomic():
        from_state = tenant.state
        claimed = tenant_transition(
            tenant=tenant,
            from_states=[from_state] if from_state in MOVABLE else [],
            to_state=State.MOVING,
            action="move_requested",
            actor=actor,
            reason="moving to another host; connections wait a few seconds meanwhile",
        )
        if not claimed:
            raise Conflict(f"a {tenant.state} database is not moved")
        try:
            move = Move.objects.create(
                tenant=tenant,
                source_id=tenant.host_id,
                target=target,
                from_state=from_state,
                requested_by=actor,
            )
        except IntegrityError:
            raise Conflict(f"{tenant.name} is being moved already") from None
        send_after_commit(
            host_tasks.instance_move_out,
            (move_job(move), specs.spec_of(tenant)),
            queue=tenant.host.queue,
        )
    return move


def _host_ref(host: Host, tenant_pk: int) -> dict:
    return {
        "name": host.name,
        "public_host": host.public_host,
        "pooler_port": host.pooler_port_for(tenant_pk),  # the tenant's PgBouncer there
        "queue": host.queue,
    }


def move_job(move: Move) -> dict:
    """What the hosts need for the move's steps (tenants/host/moves.py)."""
    local = Backup.objects.filter(
        tenant=move.tenant_id, store="local", state=Backup.State.DONE
    ).exclude(location="")
    return {
        "id": move.pk,
        "created": move.created_at.isoformat(),
        "from_state": move.from_state,
        "requested_by": move.requested_by,
        "source": _host_ref(move.source, move.tenant_id),
        "target": _host_ref(move.target, move.tenant_id),
        "backups": [backup_ref(backup) for backup in local],
        "archive_location": move.archive_location,
        "archive_sha256": move.archive_sha256,
        "paused_at": move.paused_at.timestamp() if move.paused_at else None,
    }


def moves_repair(*, now=None) -> int:
    """Moves nobody carries on (a worker died, a message was lost), older than any
    step may take: one whose last step was to finish on the source is finished
    there; one stuck before that is put back on the source as it was."""
    now = now or timezone.now()
    stuck = now - STUCK_AFTER
    repaired = 0
    for move in Move.objects.filter(
        state__in=[Move.State.PAUSING, Move.State.COPYING, Move.State.FINISHING],
        created_at__lt=stuck,
    ).select_related("tenant__plan", "source", "target"):
        job, spec = move_job(move), specs.spec_of(move.tenant)
        if move.state == Move.State.FINISHING:
            host_tasks.instance_move_finish.apply_async((job, spec), queue=move.source.queue)
        else:
            host_tasks.instance_move_abort.apply_async(
                (job, spec, "the move did not finish (a worker was lost)"),
                queue=move.source.queue,
            )
        repaired += 1
    return repaired


def move_wait(move: Move, timeout: float = MOVE_WAIT_SECONDS) -> Move:
    """Poll until the move is done or failed (or `timeout` passes); the fresh row."""
    deadline = time.monotonic() + timeout
    while True:
        fresh = Move.objects.select_related("tenant", "source", "target").get(pk=move.pk)
        if fresh.state in (Move.State.DONE, Move.State.FAILED) or time.monotonic() > deadline:
            return fresh
        time.sleep(0.05)


def target_pick(source: Host) -> Host | None:
    """Where a database leaving `source` goes: the accepting, live host with the
    most room (as for new databases), never the source."""
    return selectors.host_pick(exclude=source)


def host_drain(
    *, host: Host, actor: str, report: Callable[[str], None] = lambda line: None
) -> dict[str, int]:
    """Stop placing databases on `host`, and move every running and sleeping one to
    the others, one after the other. Returns counts: moved, failed, left (in a
    state that is not moved: failed, suspended, being made or deleted)."""
    drain_begin(host=host, actor=actor)
    counts = {"moved": 0, "failed": 0, "left": 0}
    tried: set[int] = set()
    while (outcome := drain_next(host=host, actor=actor, skip=tried)) is not None:
        tenant, moved, line = outcome
        tried.add(tenant.pk)
        counts["moved" if moved else "failed"] += 1
        report(line)
    left = (
        Tenant.objects.filter(host=host)
        .exclude(state=State.DELETED)
        .values("state")
        .annotate(n=Count("pk"))
    )
    for row in left:
        counts["left"] += row["n"]
        report(f"left on {host.name}: {row['n']} {row['state']}")
    return counts


def drain_begin(*, host: Host, actor: str) -> None:
    Host.objects.filter(pk=host.pk).update(accepting=False)
    event_record(host=host, action="drain", actor=actor, message="no new databases; moving all")


def drain_next(
    *, host: Host, actor: str, skip: set[int], wait: float = MOVE_WAIT_SECONDS
) -> tuple[Tenant, bool, str] | None:
    """Move the next running or sleeping database off `host` (none left, or none
    but those in `skip`: None). Returns it, whether it moved, and a line saying so."""
    tenant = (
        Tenant.objects.filter(host=host, state__in=MOVABLE)
        .exclude(pk__in=skip)
        .select_related("host")
        .order_by("pk")
        .first()
    )
    if tenant is None:
        return None
    target = target_pick(host)
    if target is None:
        return tenant, False, f"{tenant.database_name}: not moved: no other host has room"
    try:
        move = move_wait(move_start(tenant=tenant, target=target, actor=actor), timeout=wait)
    except (Conflict, Unavailable) as exc:
        return tenant, False, f"{tenant.database_name}: not moved: {exc}"
    if move.state == Move.State.DONE:
        return (
            tenant,
            True,
            f"{tenant.database_name}: {move.from_state}, moved to {target.name} "
            f"(clients waited {move.pause_ms} ms)",
        )
    return tenant, False, f"{tenant.database_name}: {move.state}: {move.error or 'still under way'}"


def forwards_refresh(tenant: Tenant) -> int:
    """The hosts that still forward the tenant's old connection string (it moved
    away from them) get its current spec: after a password reset, the old string
    works with the new password."""
    now = timezone.now()
    sources = {
        move.source
        for move in Move.objects.filter(
            tenant=tenant, state=Move.State.DONE, forward_until__gt=now
        ).select_related("source")
        if move.source_id != tenant.host_id
    }
    fresh = Tenant.objects.select_related("plan").get(pk=tenant.pk)
    for source in sources:
        send_after_commit(host_tasks.forward_refresh, (specs.spec_of(fresh),), queue=source.queue)
    return len(sources)
