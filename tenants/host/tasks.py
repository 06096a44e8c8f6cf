"""The host's Celery tasks, run by the worker of its queues: short work on
`host.<name>` (provision, sleep, wake, passwords, reconcile), long work on
`host.<name>.bulk` (backups, restores, their verification). Each task is named after
the host agent's function it runs (the control plane's `tenant_sleep` asks for
`instance_sleep`); each takes ids, re-fetches, and is idempotent, hence acks_late.
"""

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from dbaas import locks
from tenants.backup_stores import get_store
from tenants.host import agent, backups, moves, usage
from tenants.lifecycle import event_record, tenant_transition
from tenants.models import Backup, Host, Move, Restore, Tenant
from unikernel_images.runtimes.base import InstanceState

log = logging.getLogger(__name__)
State = Tenant.State
WORKER = "worker"
# A provisioning or deleting tenant older than this was abandoned by a dead worker.
STUCK_AFTER = timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 30)
# Work nobody is doing is queued again after this long, and a provisioning nobody
# has managed to do is given up after GIVE_UP_AFTER (see _sweep_lost_work).
REQUEUE_AFTER = timedelta(seconds=10)
GIVE_UP_AFTER = timedelta(seconds=60)


def _load(tenant_id: int) -> Tenant | None:
    related = ("host", "plan", "account__user", "restored_from__tenant")
    return Tenant.objects.select_related(*related).filter(pk=tenant_id).first()


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def work_lock(kind: str, pk: int) -> str:
    """The name of the lock a task holds while it does one piece of work: held means
    someone is on it; free while the row says it is under way means its worker died
    (see _sweep_lost_work)."""
    return f"work-{kind}-{pk}"


@shared_task(acks_late=True)
def instance_provision(tenant_id: int) -> str:
    # A second copy of the task (queued again by the sweep) waits for the first,
    # then finds the state changed.
    with locks.held(work_lock("provision", tenant_id)):
        return _provision(tenant_id)


def _provision(tenant_id: int) -> str:
    tenant = _load(tenant_id)
    if tenant is None or tenant.state != State.PROVISIONING:
        return "skipped"
    started = time.monotonic()
    try:
        if tenant.restored_from_id:
            agent.instance_provision_from_backup(tenant)
        else:
            agent.instance_provision(tenant)
    except Exception as exc:
        log.exception("provisioning %s failed", tenant)
        _fail_and_discard(tenant, f"provisioning failed: {exc}", WORKER, _ms(started))
        return "failed"
    tenant_transition(
        tenant=tenant,
        from_states=[State.PROVISIONING],
        to_state=State.RUNNING,
        actor=WORKER,
        action="provision",
        duration_ms=_ms(started),
        last_active_at=timezone.now(),
    )
    # After the answer, off the request's path: its first size, and a new spare
    # for the one just used.
    size = agent.runtime_for(tenant).data_usage(tenant.instance_id)
    # The template is writable; data from a backup may carry the read-only setting.
    read_only = None if tenant.restored_from_id else False
    Tenant.objects.filter(pk=tenant.pk).update(size_bytes=size, storage_read_only=read_only)
    agent.spares_refill(tenant.runtime)
    return "running"


def _fail_and_discard(tenant: Tenant, reason: str, actor: str, duration_ms: int | None) -> None:
    """After a failed provisioning: state failed, no pooler entry, no process, no directory.

    The pooler is rewritten in the same transaction as the state change, so the API
    (which waits for the state) sees the failure only once the entry is gone.
    """

    def mark_failed() -> None:
        tenant_transition(
            tenant=tenant,
            from_states=[State.PROVISIONING],
            to_state=State.FAILED,
            reason=reason,
            actor=actor,
            action="provision",
            duration_ms=duration_ms,
        )

    try:
        with agent.routing_change(tenant.host):
            mark_failed()
            agent.instance_remove(tenant)
    except Exception:
        log.exception("cleaning up failed %s did not finish; reconcile will", tenant)
        mark_failed()


@shared_task(acks_late=True)
def instance_destroy(tenant_id: int) -> str:
    tenant = _load(tenant_id)
    if tenant is None or tenant.state != State.DELETING:
        return "skipped"
    started = time.monotonic()
    agent.instance_destroy(tenant)
    tenant_transition(
        tenant=tenant,
        from_states=[State.DELETING],
        to_state=State.DELETED,
        actor=WORKER,
        action="delete",
        duration_ms=_ms(started),
        deleted_at=timezone.now(),
    )
    return "deleted"


@shared_task(acks_late=True)
def instance_apply_secret(tenant_id: int) -> str:
    tenant = _load(tenant_id)
    if tenant is None or not tenant.pending_scram_secret or tenant.state != State.RUNNING:
        return "skipped"
    secret = tenant.pending_scram_secret
    agent.instance_apply_secret(tenant, secret)
    # The API sees the reset done (pending cleared) only once the pooler has the
    # new secret too.
    with agent.routing_change(tenant.host):
        claimed = Tenant.objects.filter(pk=tenant.pk, pending_scram_secret=secret).update(
            scram_secret=secret, pending_scram_secret=""
        )
        if claimed:
            event_record(tenant=tenant, action="password_applied", actor=WORKER)
    return "applied"


@shared_task(acks_late=True)
def instance_sleep(tenant_id: int, actor: str = WORKER) -> str:
    tenant = _load(tenant_id)
    if tenant is None:
        return "skipped"
    return agent.instance_sleep(tenant, actor=actor)


@shared_task(acks_late=True)
def instance_wake(tenant_id: int, actor: str = WORKER) -> str:
    tenant = _load(tenant_id)
    if tenant is None or tenant.state not in (State.RUNNING, State.SLEEPING):
        return "skipped"
    agent.instance_wake(tenant, actor=actor)
    return "running"


@shared_task(acks_late=True)
def instance_restart(tenant_id: int, actor: str = WORKER) -> str:
    tenant = _load(tenant_id)
    return agent.instance_restart(tenant, actor=actor) if tenant else "skipped"


@shared_task(acks_late=True)
def instance_suspend(tenant_id: int, actor: str = WORKER) -> str:
    tenant = _load(tenant_id)
    return agent.instance_suspend(tenant, actor=actor) if tenant else "skipped"


@shared_task(acks_late=True)
def instance_unsuspend(tenant_id: int, actor: str = WORKER) -> str:
    tenant = _load(tenant_id)
    return agent.instance_unsuspend(tenant, actor=actor) if tenant else "skipped"


@shared_task
def usage_record(host_name: str) -> int:
    return usage.record(Host.objects.get(name=host_name))


@shared_task
def instances_sleep_idle(host_name: str) -> dict[str, int]:
    """Put to sleep the running tenants idle for longer than their plan allows.

    Activity is read from the pooler in two queries for the whole host (SHOW POOLS,
    SHOW STATS), never by connecting to a tenant: a connected session-mode client,
    or any transaction since the last look, counts as activity.
    """
    bouncer = agent.pooler()
    pools, stats = bouncer.pools(), bouncer.stats()
    now = timezone.now()
    counts = {"active": 0, "idle": 0, "slept": 0}
    tenants = Tenant.objects.filter(
        host__name=host_name, state=State.RUNNING, plan__sleeps_when_idle=True
    ).select_related("host", "plan")
    for tenant in tenants:
        xacts = agent.pooler_xact_count(stats, tenant)
        if agent.pooler_in_use(pools, tenant) or xacts != tenant.pooler_xact_count:
            Tenant.objects.filter(pk=tenant.pk).update(last_active_at=now, pooler_xact_count=xacts)
            counts["active"] += 1
            continue
        idle_since = tenant.last_active_at or tenant.state_changed_at
        if now - idle_since < timedelta(seconds=tenant.plan.idle_timeout_seconds):
            counts["idle"] += 1
            continue
        try:
            if agent.instance_sleep(tenant, actor="idle") == "slept":
                counts["slept"] += 1
        except Exception:
            log.exception("putting %s to sleep failed", tenant)
    return counts


@shared_task
def host_reconcile(host_name: str) -> dict[str, int]:
    """Compare what the control plane believes with this host and repair the difference.

    At most one action per tenant per cycle; one log line says why; an error on one
    tenant never stops the cycle.
    """
    host = Host.objects.get(name=host_name)
    actions: dict[str, int] = {}
    now = timezone.now()
    tenants = (
        Tenant.objects.filter(host=host).exclude(state=State.DELETED).select_related("host", "plan")
    )
    for tenant in tenants:
        try:
            action = _reconcile_tenant(tenant, now)
        except Exception as exc:
            log.exception("reconcile of %s failed", tenant)
            action = "error"
            event_record(
                tenant=tenant, action="reconcile_error", message=str(exc), actor="reconcile"
            )
        if action:
            log.info("reconcile: %s %s", tenant, action)
            actions[action] = actions.get(action, 0) + 1
    for name, step in (
        ("lost_work", _sweep_lost_work),
        ("moves_repaired", _sweep_moves),
        ("pooler_resync", agent.pooler_sync),
        ("spares_made", lambda _h: agent.spares_refill(settings.DBAAS_RUNTIME)),
    ):
        try:
            if done := step(host):
                actions[name] = int(done)
        except Exception:
            log.exception("reconcile step %s on %s failed", name, host)
            actions[f"{name}_error"] = 1
    if actions:
        log.info("reconcile %s: %s", host_name, actions)
    return actions


def _sweep_lost_work(host: Host) -> int:
    """Work this host accepted but nobody is doing (its worker died, or its message
    never reached the queue): done again where that is safe, failed and cleaned up
    where it is not. A task holds its work lock while it runs (work_lock), so a
    free lock on a row that says `running` means the worker is gone.

    - provisioning, its lock free for REQUEUE_AFTER: queued again (the tenant
      never served anything; provisioning starts from scratch), until GIVE_UP_AFTER;
    - a backup or restore `running` with its lock free: failed now, a backup's
      partial object removed; then what a cut-short restore left beside the
      instance goes and the data it replaced is put back (_sweep_import_leftovers);
    - a backup or restore `pending` for REQUEUE_AFTER while its queue is empty
      (its message was lost): queued again.
    """
    now = timezone.now()
    swept = 0
    for tenant in Tenant.objects.filter(host=host, state=State.PROVISIONING).select_related("host"):
        age = now - tenant.state_changed_at
        if age < REQUEUE_AFTER or locks.is_held(work_lock("provision", tenant.pk)):
            continue
        if age > GIVE_UP_AFTER:
            _fail_and_discard(tenant, "provisioning did not finish (worker lost)", "sweep", None)
        else:
            event_record(
                tenant=tenant,
                action="provision_requeued",
                actor="sweep",
                message="no worker was provisioning it; queued again",
            )
            instance_provision.apply_async((tenant.pk,), queue=host.queue)
        swept += 1
    # Queued again only while its queue is empty: else the message may just wait.
    requeue = _queue_length(host.bulk_queue) == 0
    for kind, model, task, abandon in (
        ("backup", Backup, backup_run, backups.backup_abandon),
        ("restore", Restore, restore_run, backups.restore_abandon),
    ):
        unfinished = model.objects.filter(
            tenant__host=host, state__in=["pending", "running"]
        ).select_related("tenant__host", "tenant__plan")
        swept += _sweep_unfinished(unfinished, kind, task, abandon, host.bulk_queue, requeue, now)
    return swept + _sweep_import_leftovers(host)


def _sweep_import_leftovers(host: Host) -> int:
    """What a restore cut short left beside an instance (what it unpacked, the data
    it was replacing, even the last writes of its killed worker's processes):
    removed, the data put back, once no restore of that tenant is under way; the
    instance then as its state says."""
    restoring = Restore.objects.filter(tenant__host=host, state__in=["pending", "running"])
    tenants = Tenant.objects.filter(host=host, state__in=[State.RUNNING, State.SLEEPING]).exclude(
        pk__in=restoring.values("tenant_id")
    )
    swept = 0
    for tenant in tenants.select_related("host", "plan"):
        runtime = agent.runtime_for(tenant)
        if not runtime.import_leftovers(tenant.instance_id):
            continue
        with agent.instance_lock(tenant, timeout=0) as mine:
            if mine:  # else a wake or sleep is on it: the next sweep
                if runtime.abandon_import(agent.instance_spec(tenant)):
                    event_record(
                        tenant=tenant,
                        action="restore",
                        actor="sweep",
                        message="the data a cut-short restore replaced is back",
                    )
                swept += 1
        agent.instance_repair(tenant)  # running again if it should
    return swept


def _sweep_unfinished(
    rows, kind: str, task, abandon: Callable[[Any, str], None], queue: str, requeue: bool, now
) -> int:
    """Backups or restores (`rows`) nobody is doing: a running one abandoned, a
    pending one queued again (if `requeue`)."""
    swept = 0
    for row in rows:
        if locks.is_held(work_lock(kind, row.pk)):
            continue
        if row.state == "running":
            abandon(row, "the worker doing it was lost")
            swept += 1
        elif requeue and now - row.created_at > REQUEUE_AFTER:
            task.apply_async((row.pk,), queue=queue)
            swept += 1
    return swept


def _queue_length(queue: str) -> int | None:
    """Messages waiting in a queue (None if the broker cannot say). The broker is
    Redis, where Celery keeps a queue as a list of that name."""
    import redis

    try:
        length = redis.Redis.from_url(settings.REDIS_PY_URL, socket_timeout=5).llen(queue)
        return cast(int, length)  # a synchronous client: an int, not an awaitable
    except redis.RedisError as exc:
        log.warning("cannot read the length of queue %s: %s", queue, exc)
        return None


def _reconcile_tenant(tenant: Tenant, now) -> str | None:
    if tenant.state in (State.RUNNING, State.SLEEPING, State.SUSPENDED):
        if tenant.state == State.RUNNING and tenant.pending_scram_secret:
            instance_apply_secret(tenant.pk)
        return agent.instance_repair(tenant)
    stuck = now - tenant.state_changed_at > STUCK_AFTER
    if tenant.state == State.PROVISIONING and stuck:
        _fail_and_discard(tenant, "provisioning did not finish (worker lost)", "reconcile", None)
        return "failed"
    if tenant.state == State.DELETING and stuck:
        instance_destroy(tenant.pk)
        return "deleted"
    if tenant.state == State.FAILED and _leftover(tenant):
        # Failed while this host could not clean up (the control plane fails a
        # provisioning whose host stopped): what was made here goes.
        agent.instance_destroy(tenant)
        return "discarded"
    return None


def _leftover(tenant: Tenant) -> bool:
    """An instance of a failed tenant is here, and no provisioning of it is still
    running (one that began before the control plane failed it finishes first)."""
    if locks.is_held(work_lock("provision", tenant.pk)):
        return False
    return agent.runtime_for(tenant).status(tenant.instance_id).state is not InstanceState.MISSING


@shared_task(acks_late=True)
def backup_run(backup_id: int) -> str:
    with locks.held(work_lock("backup", backup_id), timeout=0) as mine:
        backup = Backup.objects.select_related("tenant__host", "tenant__plan").filter(pk=backup_id)
        if not mine or not backup.exists():
            return "skipped"
        backups.backup_run(backup.get())
        return "done"


@shared_task(acks_late=True)
def restore_run(restore_id: int) -> str:
    with locks.held(work_lock("restore", restore_id), timeout=0) as mine:
        restore = Restore.objects.select_related("backup", "tenant__host", "tenant__plan").filter(
            pk=restore_id
        )
        if not mine or not restore.exists():
            return "skipped"
        backups.restore_run(restore.get())
        return "done"


@shared_task(soft_time_limit=3600, time_limit=3700)
def backups_verify(host_name: str) -> dict[str, int]:
    return backups.backups_verify(host_name=host_name, sample=settings.DBAAS_VERIFY_SAMPLE)


@shared_task
def partials_discard(host_name: str) -> int:
    """Daily: what uploads cut short left in this host's local store, and objects of
    expired backups whose delete never reached this host."""
    return backups.partials_discard(["local"]) + backups.expired_discard(host_name)


@shared_task(acks_late=True)
def backup_delete(store: str, location: str) -> str:
    """An expired backup's object, from the store on this host's disk."""
    get_store(store, settings.DATA_DIR).delete(location)
    return "deleted"


# -- moving a tenant to another host (tenants/host/moves.py) -----------------------------


def _sweep_moves(host: Host) -> int:
    """Moves from this host that nobody is carrying on (a worker died, a message was
    lost): one whose last step was to finish here is finished; one stuck before
    that (for longer than any step may take) is put back here as it was."""
    repaired = 0
    now = timezone.now()
    for move in Move.objects.filter(source=host, state__in=moves.ACTIVE).select_related(
        "tenant__host", "tenant__plan", "source", "target"
    ):
        if locks.is_held(work_lock("move", move.pk)):
            continue
        if move.state == Move.State.FINISHING:
            instance_move_finish(move.pk)
        elif now - move.created_at > 2 * STUCK_AFTER:
            instance_move_abort(move.pk, "the move did not finish (a worker was lost)")
        else:
            continue
        repaired += 1
    return repaired


def _move(move_id: int, state: str) -> Move | None:
    related = ("tenant__host", "tenant__plan", "source", "target")
    return Move.objects.select_related(*related).filter(pk=move_id, state=state).first()


@shared_task(acks_late=True)
def instance_move_out(move_id: int) -> str:
    with locks.held(work_lock("move", move_id)):
        move = _move(move_id, Move.State.PAUSING)
        if move is None:
            return "skipped"
        try:
            moves.move_out(move)
        except Exception as exc:
            log.exception("moving %s out failed", move.tenant)
            moves.move_abort(move, f"the source could not pack it: {exc}")
            return "failed"
    instance_move_in.apply_async((move_id,), queue=move.target.queue)
    return "copying"


@shared_task(acks_late=True)
def instance_move_in(move_id: int) -> str:
    with locks.held(work_lock("move", move_id)):
        move = _move(move_id, Move.State.COPYING)
        if move is None:
            return "skipped"
        try:
            moves.move_in(move)
        except Exception as exc:
            log.exception("moving %s in failed", move.tenant)
            moves.target_discard(move)
            # The source puts it back as it was.
            instance_move_abort.apply_async(
                (move_id, f"the target could not take it: {exc}"), queue=move.source.queue
            )
            return "failed"
    instance_move_finish.apply_async((move_id,), queue=move.source.queue)
    return "finishing"


@shared_task(acks_late=True)
def instance_move_finish(move_id: int) -> str:
    with locks.held(work_lock("move", move_id)):
        move = _move(move_id, Move.State.FINISHING)
        if move is None:
            return "skipped"
        moves.move_finish(move)
        return "done"


@shared_task(acks_late=True)
def instance_move_abort(move_id: int, error: str) -> str:
    with locks.held(work_lock("move", move_id)):
        move = _move(move_id, Move.State.COPYING) or _move(move_id, Move.State.PAUSING)
        if move is None:
            return "skipped"
        moves.move_abort(move, error)
        return "failed"
