"""Backups of tenants, as the control plane sees them: requested (by their owners, the
schedule, operators), kept for the plan's retention, expired. Making, restoring and
verifying them is the host's (tenants/host/backups.py), on its bulk queue.
"""

import logging
import random
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from tenants import specs
from tenants.backup_stores import get_store
from tenants.dispatch import send_after_commit
from tenants.errors import Conflict, TooManyRequests
from tenants.host.tasks import backup_delete, backup_run, restore_run
from tenants.lifecycle import event_record
from tenants.models import Account, Backup, Host, Restore, Tenant

log = logging.getLogger(__name__)
State = Tenant.State


def backup_request(
    *,
    tenant: Tenant,
    actor: str,
    store: str | None = None,
    logical: bool = False,
    account_limit: bool = True,
) -> Backup:
    """Queue a backup on the host's bulk queue. An account has at most
    DBAAS_BACKUPS_UNFINISHED_PER_ACCOUNT of them unfinished at a time (the schedule
    and operators are not held to it): one account's burst must not fill the host's
    queue for everyone."""
    if tenant.state not in (State.RUNNING, State.SLEEPING, State.SUSPENDED):
        raise Conflict(f"a {tenant.state} database cannot be backed up")
    if logical and tenant.state == State.SUSPENDED:
        raise Conflict("a suspended database cannot be exported (that needs it running)")
    with transaction.atomic():
        if account_limit:
            _check_unfinished_backups(tenant)
        backup = Backup.objects.create(
            tenant=tenant,
            requested_by=actor,
            store=store or settings.DBAAS_BACKUP_STORE,
            kind=Backup.Kind.LOGICAL if logical else "",
        )
        event_record(tenant=tenant, action="backup_requested", actor=actor, message=f"#{backup.pk}")
    send_after_commit(
        backup_run,
        (backup_job(backup), specs.spec_of(tenant)),
        queue=tenant.host.bulk_queue,
        undo=lambda: Backup.objects.filter(pk=backup.pk, state=Backup.State.PENDING).delete(),
    )
    return backup


def backup_key(backup: Backup) -> str:
    """Where a backup's object goes in its store: known from the row alone, so that
    what an upload cut short left behind can be found."""
    suffix = "dump" if backup.kind == Backup.Kind.LOGICAL else "tar.zst"
    return f"{backup.tenant.slug}/{backup.pk}-{backup.created_at:%Y%m%dT%H%M%S}.{suffix}"


def backup_job(backup: Backup) -> dict:
    """What the host needs to make the backup (tenants/host/backups.py)."""
    return {
        "id": backup.pk,
        "kind": backup.kind,
        "store": backup.store,
        "key": backup_key(backup),
        "created": backup.created_at.isoformat(),
    }


def restore_job(restore: Restore) -> dict:
    """What the host needs to restore a backup into its tenant."""
    return {
        "id": restore.pk,
        "created": restore.created_at.isoformat(),
        "backup": backup_ref(restore.backup),
    }


def backup_ref(backup: Backup) -> dict:
    """What a host needs to read a finished backup."""
    return {
        "id": backup.pk,
        "store": backup.store,
        "location": backup.location,
        "sha256": backup.sha256,
    }


def _check_unfinished_backups(tenant: Tenant) -> None:
    """Raise TooManyRequests when the tenant's account is at its limit of unfinished
    backups. The account's row lock makes concurrent requests take turns."""
    limit = settings.DBAAS_BACKUPS_UNFINISHED_PER_ACCOUNT
    Account.objects.select_for_update().filter(pk=tenant.account_id).first()
    unfinished = Backup.objects.filter(
        tenant__account_id=tenant.account_id,
        state__in=[Backup.State.PENDING, Backup.State.RUNNING],
    ).count()
    if unfinished >= limit:
        raise TooManyRequests(
            f"{unfinished} backups of this account are not finished yet (at most {limit} at "
            "a time); try again when one is done"
        )


def restore_request(*, backup: Backup, actor: str) -> Restore:
    tenant = backup.tenant
    if backup.state != Backup.State.DONE:
        raise Conflict(f"backup {backup.pk} is {backup.state}; only a finished one can be restored")
    if backup.kind == Backup.Kind.LOGICAL:
        raise Conflict("a logical export is restored with pg_restore by you; download it")
    if tenant.state not in (State.RUNNING, State.SLEEPING):
        raise Conflict(f"a {tenant.state} database cannot be restored into")
    with transaction.atomic():
        # One in-place restore per database at a time: two would unpack into the
        # same side directory on the host. The row lock serialises this check.
        Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
        unfinished = tenant.restores.filter(
            state__in=[Restore.State.PENDING, Restore.State.RUNNING]
        ).first()
        if unfinished is not None:
            raise Conflict(f"restore {unfinished.pk} of this database is not finished yet")
        restore = Restore.objects.create(backup=backup, tenant=tenant, requested_by=actor)
        event_record(
            tenant=tenant, action="restore_requested", actor=actor, message=f"backup #{backup.pk}"
        )
    send_after_commit(
        restore_run,
        (restore_job(restore), specs.spec_of(tenant)),
        queue=tenant.host.bulk_queue,
        undo=lambda: Restore.objects.filter(pk=restore.pk, state=Restore.State.PENDING).delete(),
    )
    return restore


def backups_schedule(*, now=None) -> int:
    """Request a backup of every live tenant whose last one is older than the backup
    interval, unless nothing happened since (no activity: nothing to save). One
    never used (no client transaction seen since it was made) is not backed up:
    it holds nothing of its owner's (a free tier's thousands of sleeping, unused
    databases would each cost a backup a day otherwise)."""
    now = now or timezone.now()
    interval = timedelta(seconds=settings.DBAAS_BACKUP_INTERVAL)
    requested = 0
    tenants = Tenant.objects.filter(state__in=[State.RUNNING, State.SLEEPING]).select_related(
        "host"
    )
    for tenant in tenants:
        last = tenant.backups.exclude(state=Backup.State.FAILED).order_by("-created_at").first()
        if last is None and tenant.last_active_at is None:
            continue  # never used
        if last is not None:
            if now - last.created_at < interval:
                continue
            if tenant.last_active_at and tenant.last_active_at < last.created_at:
                continue  # unchanged since that backup
        backup_request(tenant=tenant, actor="schedule", account_limit=False)
        requested += 1
    return requested


def backups_expire() -> int:
    """Keep the newest `plan.backups_kept` finished backups per tenant; delete the rest
    from their store. A deleted tenant's backups are kept just the same."""
    expired = 0
    now = timezone.now()
    for tenant in Tenant.objects.filter(backups__state=Backup.State.DONE).distinct():
        done = list(tenant.backups.filter(state=Backup.State.DONE).order_by("-created_at", "-id"))
        kept = tenant.plan.backups_kept
        doomed = done[kept:]
        # A deleted database's last backup lives as long as a daily one would.
        if tenant.state == State.DELETED:
            retention = timedelta(seconds=settings.DBAAS_BACKUP_INTERVAL * kept)
            doomed += [b for b in done[:kept] if now - b.created_at > retention]
        for backup in doomed:
            _expire(backup, reason=f"past the plan's retention ({kept})")
            expired += 1
    return expired


def backups_on_delete(*, tenant: Tenant, purge: bool) -> int:
    """When a database is deleted: keep only its newest backup (restorable into a new
    database until the plan's retention expires it), or none if `purge`."""
    done = tenant.backups.filter(state=Backup.State.DONE).order_by("-created_at", "-id")
    doomed = list(done if purge else done[1:])
    for backup in doomed:
        _expire(backup, reason="purged with the database" if purge else "database deleted")
    return len(doomed)


def _expire(backup: Backup, reason: str) -> None:
    if not Backup.objects.filter(pk=backup.pk, state=Backup.State.DONE).update(
        state=Backup.State.EXPIRED
    ):
        return  # expired already, by another beat
    if backup.store == "local":
        # The object is on the disk of the database's host: deleted there. If it
        # cannot be queued now, that host's daily store sweep deletes it.
        send_after_commit(
            backup_delete,
            (backup.store, backup.location),
            queue=backup.tenant.host.bulk_queue,
            swept=True,
        )
    else:
        get_store(backup.store, settings.DATA_DIR).delete(backup.location)
    event_record(tenant=backup.tenant, action="backup_expired", message=f"#{backup.pk}: {reason}")


def backups_fail_abandoned(*, now=None) -> int:
    """A backup left running by a worker that died: failed (its partial object was
    never made visible in the store). A restore too, so that the database can be
    restored again."""
    now = now or timezone.now()
    limit = now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 30)
    lost = "the worker doing it was lost"
    backups = Backup.objects.filter(state=Backup.State.RUNNING, started_at__lt=limit).update(
        state=Backup.State.FAILED, error=lost, finished_at=now
    )
    restores = Restore.objects.filter(
        state__in=[Restore.State.PENDING, Restore.State.RUNNING], created_at__lt=limit
    ).update(state=Restore.State.FAILED, error=lost, finished_at=now)
    return backups + restores


def backups_to_verify(host: Host, sample: int) -> list[dict]:
    """The newest physical backup of up to `sample` random tenants of `host`, each
    with its tenant's spec, for the host to verify (tenants/host/backups.py)."""
    physical = ~Q(kind=Backup.Kind.LOGICAL) & Q(state=Backup.State.DONE)
    tenant_ids = list(
        Backup.objects.filter(physical, tenant__host=host)
        .values_list("tenant_id", flat=True)
        .distinct()
    )
    chosen = []
    for tenant_id in random.sample(tenant_ids, min(sample, len(tenant_ids))):
        backup = (
            Backup.objects.filter(physical, tenant_id=tenant_id)
            .select_related("tenant__plan")
            .order_by("-created_at")[0]
        )
        chosen.append({"backup": backup_ref(backup), "spec": specs.spec_of(backup.tenant)})
    return chosen


def expired_locations(host: Host) -> list[str]:
    """Objects of `host`'s expired local backups (its daily sweep deletes those
    still there)."""
    return list(
        Backup.objects.filter(tenant__host=host, store="local", state=Backup.State.EXPIRED)
        .exclude(location="")
        .values_list("location", flat=True)
    )


def unfinished_on(host: Host) -> dict[str, list[dict]]:
    """Backups and restores the control plane believes running on `host` (its
    reconcile reports those nobody is doing any more, and discards what such a
    backup's upload left)."""
    running = Backup.objects.filter(tenant__host=host, state="running").select_related("tenant")
    restoring = Restore.objects.filter(tenant__host=host, state="running")
    return {
        "backup": [backup_job(backup) for backup in running],
        "restore": [{"id": pk} for pk in restoring.values_list("pk", flat=True)],
    }


# Work still pending this long while its host's queue is empty lost its message.
REQUEUE_AFTER = timedelta(seconds=10)


def pending_requeue(host: Host, queue_length: int | None, *, now=None) -> int:
    """Backups and restores pending on `host` for REQUEUE_AFTER while its bulk queue
    is empty (their message was lost): queued again (the host does each once)."""
    if queue_length != 0:
        return 0
    before = (now or timezone.now()) - REQUEUE_AFTER
    requeued = 0
    for backup in Backup.objects.filter(
        tenant__host=host, state="pending", created_at__lt=before
    ).select_related("tenant__plan"):
        backup_run.apply_async(
            (backup_job(backup), specs.spec_of(backup.tenant)), queue=host.bulk_queue
        )
        requeued += 1
    for restore in Restore.objects.filter(
        tenant__host=host, state="pending", created_at__lt=before
    ).select_related("tenant__plan", "backup"):
        restore_run.apply_async(
            (restore_job(restore), specs.spec_of(restore.tenant)),
            queue=host.bulk_queue,
        )
        requeued += 1
    return requeued
