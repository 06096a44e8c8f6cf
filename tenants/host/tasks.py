"""The host agent's Celery tasks, on the host's own queues (`host.<name>` for short
work, `host.<name>.bulk` for backups and restores). Each is named after the agent
function it runs and takes what it needs in its arguments: the tenant's spec (as
the control plane has it, tenants/specs.py) and the job. The host keeps the spec
(tenants/host/store.py), does the work, and reports what happened by task name
(tenants/host/report.py); it never reads the control plane's database.
"""

import logging
import time
from typing import Any

from celery import shared_task
from django.conf import settings

from dbaas import locks
from dbaas.celery import host_queue
from dbaas.env import pki_dir
from poolers import tls
from tenants.backup_stores import get_store
from tenants.host import agent, backups, moves, priority, report, usage
from tenants.host.spec import (
    DELETING,
    FAILED,
    MOVING,
    PROVISIONING,
    RUNNING,
    SLEEPING,
    SUSPENDED,
    TenantSpec,
)

log = logging.getLogger(__name__)
WORKER = "worker"
# A provisioning or deleting tenant older than this was abandoned by a dead worker.
STUCK_AFTER = settings.CELERY_TASK_TIME_LIMIT + 30
# Work nobody is doing is queued again after this long, and a provisioning nobody
# has managed to do is given up after GIVE_UP_AFTER (see host_reconcile).
REQUEUE_AFTER = 10
GIVE_UP_AFTER = 60
CLOCK_MARGIN = 5


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _seq_unheld() -> int:
    """The number of a report on a tenant this host no longer holds (a failed one
    being deleted): after any it sent while it held it."""
    return time.time_ns()


def work_lock(kind: str, pk: int) -> str:
    """The name of the lock a task holds while it does one piece of work: held means
    someone is on it; free while the control plane says it is under way means its
    worker died (see host_reconcile)."""
    return f"work-{kind}-{pk}"


def _spec(data: dict[str, Any]) -> TenantSpec:
    return TenantSpec.of_json(data)


# -- a tenant's lifecycle ----------------------------------------------------------------


@shared_task(acks_late=True)
def instance_provision(spec: dict[str, Any], source: dict[str, Any] | None = None) -> str:
    """Make the tenant's instance: from the image's template, or from a backup
    (`source`: its store, location, sha256, and the role and database it had)."""
    tenant = _spec(spec)
    # A second copy of the task (queued again by the reconcile) waits for the
    # first, then finds the work done.
    with locks.held(work_lock("provision", tenant.pk)):
        if agent.store().state(tenant.instance_id) not in (None, PROVISIONING):
            return "skipped"
        started = time.monotonic()
        try:
            if source is not None:
                agent.instance_provision_from_backup(
                    tenant,
                    backups.chunks_verified(source),
                    source_role=source["role"],
                    source_database=source["database"],
                )
            else:
                agent.instance_provision(tenant)
        except Exception as exc:
            log.exception("provisioning %s failed", tenant.instance_id)
            _fail_and_discard(tenant, f"provisioning failed: {exc}", WORKER, _ms(started))
            return "failed"
        runtime = agent.runtime_for(tenant)
        # The template is writable; a backup may carry the read-only setting.
        read_only = None if source else False
        agent.store().put(tenant.but(storage_read_only=read_only), decided_here=True)
        agent.state_change(
            tenant,
            PROVISIONING,
            RUNNING,
            action="provision",
            actor=WORKER,
            duration_ms=_ms(started),
            idle_from_now=True,
            fields={
                "size_bytes": runtime.data_usage(tenant.instance_id),
                "storage_read_only": read_only,
            },
        )
    # After the answer, off the request's path: a new spare for the one just used.
    agent.spares_refill(tenant.runtime)
    return "running"


def _fail_and_discard(tenant: TenantSpec, reason: str, actor: str, duration_ms: int | None) -> None:
    """After a failed provisioning: no pooler entry, no process, no directory; then
    the state failed (the API, which waits for the state, sees the failure only
    once the entry is gone)."""
    seq = agent.store().set_state(tenant.instance_id, FAILED)
    try:
        agent.instance_destroy(tenant)
    except Exception:
        log.exception("cleaning up failed %s did not finish; reconcile will", tenant.instance_id)
    report.transition(
        tenant.pk,
        seq or _seq_unheld(),
        [PROVISIONING],
        FAILED,
        action="provision",
        actor=actor,
        reason=reason,
        duration_ms=duration_ms,
    )


@shared_task(acks_late=True)
def instance_destroy(spec: dict[str, Any]) -> str:
    tenant = _spec(spec)
    started = time.monotonic()
    seq = agent.store().set_state(tenant.instance_id, DELETING)
    agent.instance_destroy(tenant)
    report.transition(
        tenant.pk,
        seq or _seq_unheld(),
        [DELETING],
        "deleted",
        action="delete",
        actor=WORKER,
        duration_ms=_ms(started),
    )
    return "deleted"


@shared_task(acks_late=True)
def instance_apply_secret(spec: dict[str, Any], secret: str) -> str:
    tenant = _spec(spec)
    if agent.store().state(tenant.instance_id) != RUNNING:
        return "skipped"
    agent.instance_apply_secret(tenant, secret)
    # The API sees the reset done only once the pooler has the new secret too.
    report.secret_applied(tenant.pk, secret)
    return "applied"


def _held(spec: dict[str, Any]) -> TenantSpec:
    """The tenant's spec as sent, kept (its state here unchanged)."""
    tenant = _spec(spec)
    agent.store().put(tenant)
    return tenant


@shared_task(acks_late=True)
def instance_sleep(spec: dict[str, Any], actor: str = WORKER) -> str:
    return agent.instance_sleep(_held(spec).instance_id, actor=actor)


@shared_task(acks_late=True)
def instance_wake(spec: dict[str, Any], actor: str = WORKER) -> str:
    tenant = _held(spec)
    if agent.store().state(tenant.instance_id) not in (RUNNING, SLEEPING):
        return "skipped"
    agent.instance_wake(tenant.instance_id, actor=actor)
    return "running"


@shared_task(acks_late=True)
def instance_restart(spec: dict[str, Any], actor: str = WORKER) -> str:
    return agent.instance_restart(_held(spec).instance_id, actor=actor)


@shared_task(acks_late=True)
def instance_suspend(spec: dict[str, Any], actor: str = WORKER) -> str:
    return agent.instance_suspend(_spec(spec), actor=actor)


@shared_task(acks_late=True)
def instance_unsuspend(spec: dict[str, Any], actor: str = WORKER) -> str:
    return agent.instance_unsuspend(_spec(spec), actor=actor)


# -- periodic work -----------------------------------------------------------------------


@shared_task
def usage_record(host_name: str) -> int:
    started = time.monotonic()
    with priority.background():
        measured = usage.record()
    _overran("usage walk", host_name, started, measured)
    return measured


@shared_task
def instances_sleep_idle(host_name: str) -> dict[str, int]:
    """Put to sleep the running tenants idle for longer than their plan allows.

    Activity is read from the poolers, two queries each (SHOW POOLS, SHOW STATS),
    never by connecting to a tenant: a connected session-mode client,
    or any transaction since the last look, counts as activity.
    """
    with priority.background():
        return _sleep_idle(host_name)


def _sleep_idle(host_name: str) -> dict[str, int]:
    started = time.monotonic()
    pools, stats = agent.pooler_pools(), agent.pooler_stats()
    held = agent.store()
    now = time.time()
    counts = {"active": 0, "idle": 0, "slept": 0}
    active: dict[int, dict[str, Any]] = {}
    for tenant, _state in held.all((RUNNING,)):
        if not tenant.plan.sleeps_when_idle:
            continue
        xacts = agent.pooler_xact_count(stats, tenant)
        last_active, last_xacts = held.activity(tenant.instance_id)
        if agent.pooler_in_use(pools, tenant) or xacts != last_xacts:
            held.activity_seen(tenant.instance_id, xacts)
            active[tenant.pk] = {"last_active_at": now}
            counts["active"] += 1
            continue
        if last_active is None:
            held.activity_seen(tenant.instance_id, xacts)  # first look: from now
            counts["idle"] += 1
            continue
        if now - last_active < tenant.plan.idle_timeout_seconds:
            counts["idle"] += 1
            continue
        try:
            if agent.instance_sleep(tenant.instance_id, actor="idle") == "slept":
                counts["slept"] += 1
        except Exception:
            log.exception("putting %s to sleep failed", tenant.instance_id)
    report.measured_many(active)
    _overran("idle check", host_name, started, sum(counts.values()))
    return counts


@shared_task
def host_reconcile(
    host_name: str,
    tenants: list[dict[str, Any]] | None = None,
    unfinished: dict[str, list[dict[str, Any]]] | None = None,
    built_at: float | None = None,
    share: list[int] | None = None,
) -> dict[str, int]:
    """Bring this host in line with what the control plane says it should hold
    (`tenants`: each with its spec, how long it has been in its state, and a
    password still to apply), and repair the difference. The list holds every
    tenant in a passing state and, of the running and sleeping ones, those whose pk
    modulo share[1] is share[0] (a slice: tenants/specs.py); what this host holds of
    that slice and is not listed was deleted. Also finds work it had
    taken on that nobody is doing (`unfinished`: backups and restores the control
    plane believes under way here).

    At most one action per tenant per cycle; one log line says why; an error on one
    tenant never stops the cycle. Without `tenants` (as the host starts), only what
    the host holds is repaired. A tenant whose state changed here after the list
    was made (`built_at`, epoch seconds) waits for the next list: this one is older
    than what the host knows.
    """
    # One at a time: a reconcile that takes longer than the beat's interval (many
    # tenants, a slow disk) must not pile up behind itself and hold every slot of
    # the worker; the next list comes with the next beat.
    with locks.held(f"reconcile-{host_name}", timeout=0) as mine:
        if not mine:
            log.info("reconcile %s: another one is under way; this list is skipped", host_name)
            return {"skipped": 1}
        started = time.monotonic()
        with priority.background():
            done = _reconcile(host_name, tenants, unfinished, built_at, share)
        _overran("reconcile", host_name, started, len(tenants or []))
        return done


def _overran(what: str, host_name: str, started: float, tenants: int) -> None:
    """A periodic task that took longer than the beat's interval says so."""
    took = time.monotonic() - started
    if took > settings.DBAAS_RECONCILE_INTERVAL:
        log.warning(
            "%s %s took %.1f s (%d tenants), longer than the beat's %d s",
            what,
            host_name,
            took,
            tenants,
            settings.DBAAS_RECONCILE_INTERVAL,
        )


def _reconcile(
    host_name: str,
    tenants: list[dict[str, Any]] | None,
    unfinished: dict[str, list[dict[str, Any]]] | None,
    built_at: float | None,
    share: list[int] | None,
) -> dict[str, int]:
    remainder, slices = share or (0, 1)
    # Hosts' clocks may differ from the control plane's by a few seconds.
    built_at = (built_at if built_at is not None else time.time()) - CLOCK_MARGIN
    actions: dict[str, int] = {}

    def count(action: str | None) -> None:
        if action:
            actions[action] = actions.get(action, 0) + 1

    held = agent.store()
    listed: set[str] = set()
    for item in tenants or []:
        tenant = _spec(item["spec"])
        listed.add(tenant.instance_id)
        if held.changed(tenant.instance_id) > built_at:
            continue
        try:
            count(_reconcile_tenant(tenant, item.get("state_age", 0), item))
        except Exception as exc:
            log.exception("reconcile of %s failed", tenant.instance_id)
            count("error")
            report.event(tenant.pk, "reconcile_error", "reconcile", str(exc))
    if tenants is None:
        for tenant, _state in held.all((RUNNING, SLEEPING, SUSPENDED)):
            try:
                count(agent.instance_repair(tenant))
            except Exception:
                log.exception("repair of %s failed", tenant.instance_id)
    else:
        # Held here, unknown to the control plane (deleted while this host was
        # away): of the slice listed, which holds every one not running or asleep.
        for tenant, _state in held.all(shard=(remainder, slices)):
            if (
                tenant.instance_id not in listed
                and held.changed(tenant.instance_id) < built_at
                and not locks.is_held(work_lock("provision", tenant.pk))
            ):
                agent.instance_destroy(tenant)
                count("forgotten")
    for name, step in (
        ("abandoned", lambda: _sweep_abandoned(unfinished or {})),
        ("import_leftovers", lambda: _sweep_import_leftovers(listed if tenants else None)),
        ("pooler_resync", agent.pooler_sync),
        ("spares_made", lambda: agent.spares_refill(settings.DBAAS_RUNTIME)),
    ):
        try:
            if done := step():
                actions[name] = int(done)
        except Exception:
            log.exception("reconcile step %s on %s failed", name, host_name)
            actions[f"{name}_error"] = 1
    if actions:
        log.info("reconcile %s: %s", host_name, actions)
    return actions


def _reconcile_tenant(tenant: TenantSpec, state_age: float, item: dict[str, Any]) -> str | None:
    """One tenant, as the control plane has it (`tenant.state`), against this host."""
    held = agent.store()
    here = held.state(tenant.instance_id)
    wanted = tenant.state
    if wanted == PROVISIONING:
        if locks.is_held(work_lock("provision", tenant.pk)) or state_age < REQUEUE_AFTER:
            return None
        if state_age > GIVE_UP_AFTER:
            _fail_and_discard(tenant, "provisioning did not finish (worker lost)", "sweep", None)
            return "failed"
        report.event(tenant.pk, "provision_requeued", "sweep", "no worker was provisioning it")
        instance_provision.apply_async(
            (tenant.as_json(), item.get("source")), queue=host_queue(settings.DBAAS_HOST_NAME)
        )
        return "requeued"
    if wanted == DELETING:
        if state_age > STUCK_AFTER:
            instance_destroy(tenant.as_json())
            return "deleted"
        return None
    if wanted == FAILED:
        if locks.is_held(work_lock("provision", tenant.pk)):
            return None  # a provisioning that began before it was failed finishes first
        runtime = agent.runtime_for(tenant)
        if here is not None or runtime.status(tenant.instance_id).state.value != "missing":
            agent.instance_destroy(tenant)
            return "discarded"
        return None
    if wanted == MOVING:
        return None  # the move's own steps deal with it
    if wanted == SUSPENDED:
        held.put(tenant, state=SUSPENDED)
        return agent.instance_repair(tenant)
    # Running or sleeping: this host decides which; the control plane hears it.
    if here not in (RUNNING, SLEEPING):
        running = agent.runtime_for(tenant).status(tenant.instance_id).state.value == "running"
        held.put(tenant, state=wanted if here is None else (RUNNING if running else SLEEPING))
    else:
        held.put(tenant)
    if item.get("pending_scram_secret") and held.state(tenant.instance_id) == RUNNING:
        instance_apply_secret(tenant.as_json(), item["pending_scram_secret"])
    did = agent.instance_repair(tenant)
    now = held.state(tenant.instance_id)
    if now in (RUNNING, SLEEPING) and now != wanted and did is None:
        # The control plane missed a report: say it again.
        agent.state_change(tenant, wanted, now, action="state", actor="reconcile")
        return "reported"
    return did


def _sweep_abandoned(unfinished: dict[str, list[dict[str, Any]]]) -> int:
    """Backups and restores the control plane believes running here that nobody is
    doing (their work lock is free): a backup's partial upload removed (the store
    never showed it), and each reported abandoned."""
    swept = 0
    for kind in ("backup", "restore"):
        for job in unfinished.get(kind, []):
            if locks.is_held(work_lock(kind, job["id"])):
                continue
            if kind == "backup":
                try:
                    get_store(job["store"], settings.DATA_DIR).discard_partial(job["key"])
                except Exception:
                    log.exception("the partial upload of backup %s stays", job["id"])
            report.abandoned(kind, job["id"], "the worker doing it was lost")
            swept += 1
    return swept


def _sweep_import_leftovers(only: set[str] | None = None) -> int:
    """What a restore cut short left beside an instance (what it unpacked, the data
    it was replacing, even the last writes of its killed worker's processes):
    removed, the data put back, once no restore of that tenant is under way; the
    instance then as its state says. Only those in `only`, if given (this beat's
    slice)."""
    swept, held = 0, agent.store()
    for tenant, _state in held.all((RUNNING, SLEEPING), ids=only):
        runtime = agent.runtime_for(tenant)
        if not runtime.import_leftovers(tenant.instance_id):
            continue
        if locks.is_held(f"restoring-{tenant.instance_id}"):
            continue
        with agent.instance_lock(tenant, timeout=0) as mine:
            if mine:  # else a wake or sleep is on it: the next sweep
                if runtime.abandon_import(agent.instance_spec(tenant)):
                    report.event(
                        tenant.pk,
                        "restore",
                        "sweep",
                        "the data a cut-short restore replaced is back",
                    )
                swept += 1
        agent.instance_repair(tenant)  # running again if it should
    return swept


# -- backups -----------------------------------------------------------------------------


@shared_task(acks_late=True)
def backup_run(job: dict[str, Any], spec: dict[str, Any]) -> str:
    with locks.held(work_lock("backup", job["id"]), timeout=0) as mine:
        if not mine or not agent.store().job_take("backup", job):
            return "skipped"
        backups.backup_run(job, _spec(spec))
        return "done"


@shared_task(acks_late=True)
def restore_run(job: dict[str, Any], spec: dict[str, Any]) -> str:
    tenant = _spec(spec)
    with (
        locks.held(work_lock("restore", job["id"]), timeout=0) as mine,
        locks.held(f"restoring-{tenant.instance_id}"),
    ):
        if not mine or not agent.store().job_take("restore", job):
            return "skipped"
        backups.restore_run(job, tenant)
        return "done"


@shared_task
def backups_verify(host_name: str, sample: list[dict[str, Any]] | None = None) -> dict[str, int]:
    """Verify these backups (the control plane picks a sample of this host's)."""
    counts = {"ok": 0, "bad": 0}
    for item in sample or []:
        ok, _message = backups.backup_verify(item["backup"], _spec(item["spec"]))
        counts["ok" if ok else "bad"] += 1
    return counts


@shared_task
def partials_discard(host_name: str, expired: list[str] | None = None) -> int:
    """Daily: what uploads cut short left in this host's local store, and objects of
    expired backups whose delete never reached this host (`expired`: their
    locations, as the control plane has them)."""
    return backups.partials_discard(["local"]) + backups.expired_discard(expired or [])


@shared_task(acks_late=True)
def backup_delete(store: str, location: str) -> str:
    """An expired backup's object, from the store on this host's disk."""
    get_store(store, settings.DATA_DIR).delete(location)
    return "deleted"


# -- moving a tenant to another host (tenants/host/moves.py) -----------------------------


@shared_task(acks_late=True)
def forward_refresh(spec: dict[str, Any]) -> str:
    """A tenant this host forwards (it moved away) has a new spec (a new password):
    the forward's pooler entry takes it, so that the old string works with it."""
    tenant = _spec(spec)
    if not agent.store().forward_update(tenant):
        return "skipped"
    agent.pooler_sync(tenant)
    return "refreshed"


@shared_task
def host_certificate(host_name: str, certificate: str, ca_certificate: str) -> str:
    """The certificate the control plane signed for this host's request (sent with
    its registration: tenants/host/identity.py); run_pooler waits for it."""
    if host_name != settings.DBAAS_HOST_NAME:
        return f"not for this host ({host_name})"
    tls.install_host_certificate(pki_dir(), certificate, ca_certificate)
    return "installed"


@shared_task(acks_late=True)
def instance_move_out(job: dict[str, Any], spec: dict[str, Any]) -> str:
    tenant = _spec(spec)
    with locks.held(work_lock("move", job["id"])):
        if not agent.store().job_take("move-out", job):
            return "skipped"
        try:
            job = moves.move_out(job, tenant)
        except Exception as exc:
            log.exception("moving %s out failed", tenant.instance_id)
            moves.move_abort(job, tenant, f"the source could not pack it: {exc}")
            return "failed"
    instance_move_in.apply_async((job, spec), queue=job["target"]["queue"])
    return "copying"


@shared_task(acks_late=True)
def instance_move_in(job: dict[str, Any], spec: dict[str, Any]) -> str:
    tenant = _spec(spec)
    with locks.held(work_lock("move", job["id"])):
        if not agent.store().job_take("move-in", job):
            return "skipped"
        try:
            moves.move_in(job, tenant)
        except Exception as exc:
            log.exception("moving %s in failed", tenant.instance_id)
            moves.target_discard(job, tenant)
            # The source puts it back as it was.
            instance_move_abort.apply_async(
                (job, spec, f"the target could not take it: {exc}"),
                queue=job["source"]["queue"],
            )
            return "failed"
    instance_move_finish.apply_async((job, spec), queue=job["source"]["queue"])
    return "finishing"


# Finishing and aborting are done again if asked again (the control plane's repair
# asks until the move is over): each step of theirs holds when done twice.
@shared_task(acks_late=True)
def instance_move_finish(job: dict[str, Any], spec: dict[str, Any]) -> str:
    with locks.held(work_lock("move", job["id"])):
        moves.move_finish(job, _spec(spec))
        return "done"


@shared_task(acks_late=True)
def instance_move_abort(job: dict[str, Any], spec: dict[str, Any], error: str) -> str:
    with locks.held(work_lock("move", job["id"])):
        moves.move_abort(job, _spec(spec), error)
        return "failed"
