"""Backups of tenants: requesting them (services), and making and restoring them on
the tenant's host (called by the host agent's tasks).

A backup is the instance's tar stream (see Runtime.export_data), compressed with
zstd as it streams, hashed (sha256 of the stored bytes) and written to a store; a
restore checks the hash while it unpacks, and replaces the current data only after
the restored instance has started and answered.
"""

import dataclasses
import hashlib
import logging
import os
import random
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta

import zstandard
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from tenants import host_agent
from tenants.backup_stores import get_store
from tenants.dispatch import send_after_commit
from tenants.errors import Conflict, TooManyRequests, for_tenant
from tenants.models import Account, Backup, Restore, Tenant
from tenants.services import event_record, tenant_transition
from unikernel_images import postgres_admin

log = logging.getLogger(__name__)
State = Tenant.State


class ChecksumMismatch(Exception):
    pass


# -- services (control plane) -----------------------------------------------------------


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
    from tenants.tasks import backup_tenant

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
        backup_tenant,
        (backup.pk,),
        queue=tenant.host.bulk_queue,
        undo=lambda: Backup.objects.filter(pk=backup.pk, state=Backup.State.PENDING).delete(),
    )
    return backup


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
    from tenants.tasks import restore_backup

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
        restore_backup,
        (restore.pk,),
        queue=tenant.host.bulk_queue,
        undo=lambda: Restore.objects.filter(pk=restore.pk, state=Restore.State.PENDING).delete(),
    )
    return restore


def backups_schedule(*, now=None) -> int:
    """Request a backup of every live tenant whose last one is older than the backup
    interval, unless nothing happened since (no activity: nothing to save)."""
    now = now or timezone.now()
    interval = timedelta(seconds=settings.DBAAS_BACKUP_INTERVAL)
    requested = 0
    tenants = Tenant.objects.filter(state__in=[State.RUNNING, State.SLEEPING]).select_related(
        "host"
    )
    for tenant in tenants:
        last = tenant.backups.exclude(state=Backup.State.FAILED).order_by("-created_at").first()
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
    get_store(backup.store, settings.DATA_DIR).delete(backup.location)
    Backup.objects.filter(pk=backup.pk, state=Backup.State.DONE).update(state=Backup.State.EXPIRED)
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


def partials_discard(kinds: Iterable[str], *, now=None) -> int:
    """Remove from these stores what uploads cut short by a dead worker left behind."""
    now = now or timezone.now()
    started_before = now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 30)
    return sum(get_store(k, settings.DATA_DIR).discard_partials(started_before) for k in kinds)


# -- on the host --------------------------------------------------------------------------


def backup_run(backup: Backup) -> None:
    """Make the backup; the row ends `done` with sizes and hash, or `failed` with why."""
    tenant = backup.tenant
    backup.started_at = timezone.now()
    if not Backup.objects.filter(pk=backup.pk, state=Backup.State.PENDING).update(
        state=Backup.State.RUNNING, started_at=backup.started_at
    ):
        return
    store = get_store(backup.store, settings.DATA_DIR)
    logical = backup.kind == Backup.Kind.LOGICAL
    key = backup_key(backup)
    runtime = host_agent.runtime_for(tenant)
    counter = _Counter()
    started = time.monotonic()
    try:
        if logical:
            # pg_dump needs a running server: the user asked, so it may wake.
            socket_dir = host_agent.instance_wake(tenant, actor="export")
            kind = Backup.Kind.LOGICAL
            dump = postgres_admin.dump(socket_dir, tenant.database_name, major=tenant.major)
            with dump as stream:
                # The custom format is compressed already.
                stored = store.put(key, counter.hash_stored(counter.count(stream.chunks())))
        else:
            # The lock keeps a sleeping instance asleep (a wake waits) and a running
            # one from being put to sleep while its backup streams.
            with host_agent.instance_lock(tenant):
                kind = (
                    Backup.Kind.BASE
                    if runtime.status(tenant.instance_id).state == "running"
                    else Backup.Kind.COLD
                )
                with runtime.export_data(tenant.instance_id) as stream:
                    compressed = _compress(counter.count(stream.chunks()))
                    stored = store.put(key, counter.hash_stored(compressed))
    except Exception as exc:
        log.exception("backup %s failed", backup.pk)
        store.delete(key)
        Backup.objects.filter(pk=backup.pk).update(
            state=Backup.State.FAILED, error=for_tenant(str(exc))[:5000], finished_at=timezone.now()
        )
        event_record(
            tenant=tenant,
            action="backup",
            message=f"#{backup.pk} failed: {exc}",
            actor="worker",
            duration_ms=_ms(started),
        )
        return
    Backup.objects.filter(pk=backup.pk).update(
        state=Backup.State.DONE,
        kind=kind,
        location=key,
        size_bytes=counter.raw,
        compressed_bytes=stored,
        sha256=counter.sha256.hexdigest(),
        finished_at=timezone.now(),
    )
    event_record(
        tenant=tenant,
        action="backup",
        actor="worker",
        duration_ms=_ms(started),
        message=f"#{backup.pk} {kind}: {counter.raw} bytes, {stored} stored",
    )


def backup_key(backup: Backup) -> str:
    """Where a backup's object goes in its store: known from the row alone, so that
    what an upload cut short left behind can be found (backup_abandon)."""
    suffix = "dump" if backup.kind == Backup.Kind.LOGICAL else "tar.zst"
    return f"{backup.tenant.slug}/{backup.pk}-{backup.started_at:%Y%m%dT%H%M%S}.{suffix}"


def backup_abandon(backup: Backup, why: str) -> None:
    """A backup whose worker died while making it: failed, and the partial object
    its upload left removed (the store never showed it)."""
    if not Backup.objects.filter(pk=backup.pk, state=Backup.State.RUNNING).update(
        state=Backup.State.FAILED, error=why, finished_at=timezone.now()
    ):
        return
    try:
        get_store(backup.store, settings.DATA_DIR).discard_partial(backup_key(backup))
    except Exception:
        log.exception(
            "the partial object of backup %s stays; the daily sweep removes it", backup.pk
        )
    event_record(
        tenant=backup.tenant, action="backup", actor="sweep", message=f"#{backup.pk} failed: {why}"
    )


def restore_abandon(restore: Restore, why: str) -> None:
    """A restore whose worker died: failed. What it left beside the instance, and
    the data it was replacing, are the sweep of import leftovers' (it runs next:
    tenants/tasks.py), wherever the restore stopped."""
    if not Restore.objects.filter(pk=restore.pk, state=Restore.State.RUNNING).update(
        state=Restore.State.FAILED, error=why, finished_at=timezone.now()
    ):
        return
    event_record(
        tenant=restore.tenant,
        action="restore",
        actor="sweep",
        message=f"#{restore.pk} failed: {why}",
    )


def restore_run(restore: Restore) -> None:
    """Unpack and check the backup beside the current data, then swap; the current
    data is kept until the restored instance has started and answered."""
    if not Restore.objects.filter(pk=restore.pk, state=Restore.State.PENDING).update(
        state=Restore.State.RUNNING
    ):
        return
    backup, tenant = restore.backup, restore.tenant
    runtime = host_agent.runtime_for(tenant)
    started = time.monotonic()

    def progress(text: str) -> None:
        Restore.objects.filter(pk=restore.pk).update(progress=text)

    try:
        spec = host_agent.instance_spec(tenant)
        progress("downloading, checking and unpacking")
        runtime.import_data(spec, backup_chunks_verified(backup))
        with host_agent.instance_lock(tenant):
            tenant.refresh_from_db()
            was_running = runtime.status(tenant.instance_id).state == "running"
            progress("swapping in the restored data")
            runtime.stop(tenant.instance_id)
            runtime.swap_in_imported(spec)
            try:
                runtime.start(spec)
                socket_dir = runtime.socket_dir(tenant.instance_id)
                # The owner's password may have changed since the backup.
                postgres_admin.set_role_secret(
                    socket_dir, role=tenant.role_name, secret=tenant.scram_secret
                )
                with postgres_admin.connect(socket_dir, dbname=tenant.database_name) as conn:
                    conn.execute("SELECT 1")
            except Exception:
                runtime.swap_back(spec)
                if was_running:
                    runtime.start(spec)
                raise
            runtime.drop_previous(tenant.instance_id)
            if tenant.state == State.SLEEPING:
                host_agent.routes().point(tenant.instance_id, socket_dir)
                tenant_transition(
                    tenant=tenant,
                    from_states=[State.SLEEPING],
                    to_state=State.RUNNING,
                    action="wake",
                    actor="restore",
                    last_active_at=timezone.now(),
                )
    except Exception as exc:
        log.exception("restore %s failed", restore.pk)
        runtime.drop_previous(tenant.instance_id)
        Restore.objects.filter(pk=restore.pk).update(
            state=Restore.State.FAILED,
            error=for_tenant(str(exc))[:5000],
            finished_at=timezone.now(),
        )
        event_record(
            tenant=tenant,
            action="restore",
            actor="worker",
            duration_ms=_ms(started),
            message=f"backup #{backup.pk} refused: {exc}",
        )
        return
    Restore.objects.filter(pk=restore.pk).update(
        state=Restore.State.DONE, progress="done", finished_at=timezone.now()
    )
    # The restored catalog has the storage setting of its day: look again.
    Tenant.objects.filter(pk=tenant.pk).update(storage_read_only=None)
    event_record(
        tenant=tenant,
        action="restore",
        actor="worker",
        duration_ms=_ms(started),
        message=f"restored backup #{backup.pk}",
    )


def backups_verify(*, host_name: str, sample: int) -> dict[str, int]:
    """Restore the newest physical backup of up to `sample` random tenants of this host
    into a scratch instance and run pg_amcheck on every database in it.

    A corrupted or truncated backup (hash, zstd or amcheck) is reported on its row
    and as an event; it is never restored into its tenant.
    """
    physical = ~Q(kind=Backup.Kind.LOGICAL) & Q(state=Backup.State.DONE)
    tenant_ids = list(
        Backup.objects.filter(physical, tenant__host__name=host_name)
        .values_list("tenant_id", flat=True)
        .distinct()
    )
    counts = {"ok": 0, "bad": 0}
    for tenant_id in random.sample(tenant_ids, min(sample, len(tenant_ids))):
        backup = Backup.objects.filter(physical, tenant_id=tenant_id).order_by("-created_at")[0]
        ok, message = backup_verify(backup)
        counts["ok" if ok else "bad"] += 1
    return counts


def backup_verify(backup: Backup) -> tuple[bool, str]:
    tenant = Tenant.objects.select_related("host", "plan").get(pk=backup.tenant_id)
    runtime = host_agent.runtime_for(tenant)
    spec = dataclasses.replace(
        host_agent.instance_spec(tenant),
        instance_id=f"verify-{backup.pk}",
        # Its own uid, out of the tenants' range: a scratch copy is no tenant.
        uid=(
            settings.DBAAS_TENANT_UID_BASE + 1_000_000_000 + backup.pk
            if os.geteuid() == 0
            else None
        ),
    )
    try:
        runtime.destroy(spec.instance_id)
        runtime.import_data(spec, backup_chunks_verified(backup))
        runtime.swap_in_imported(spec)
        runtime.start(spec)
        message = postgres_admin.amcheck(
            runtime.socket_dir(spec.instance_id), major=spec.image.major
        )
        ok = True
    except Exception as exc:
        ok, message = False, str(exc)[:5000]
        log.error("backup %s of %s failed verification: %s", backup.pk, tenant, message)
    finally:
        runtime.destroy(spec.instance_id)
    Backup.objects.filter(pk=backup.pk).update(
        verified_at=timezone.now(), verified_ok=ok, verify_message=message
    )
    verdict = "ok" if ok else "CORRUPT"
    event_record(
        tenant=tenant,
        action="backup_verify",
        actor="verify",
        message=f"#{backup.pk} {verdict}: {message}"[:5000],
    )
    return ok, message


def backup_chunks_verified(backup: Backup) -> Iterator[bytes]:
    """The backup's tar stream, read from its store, decompressed and checked."""
    store = get_store(backup.store, settings.DATA_DIR)
    return _decompress_verified(store.get(backup.location), backup.sha256)


class _Counter:
    def __init__(self) -> None:
        self.raw = 0
        self.sha256 = hashlib.sha256()

    def count(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.raw += len(chunk)
            yield chunk

    def hash_stored(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.sha256.update(chunk)
            yield chunk


def _compress(chunks: Iterable[bytes]) -> Iterator[bytes]:
    chunker = zstandard.ZstdCompressor(level=3).chunker(chunk_size=1 << 20)
    for chunk in chunks:
        yield from chunker.compress(chunk)
    yield from chunker.finish()


def _decompress_verified(chunks: Iterable[bytes], expected_sha256: str) -> Iterator[bytes]:
    """Decompress; at the end, refuse the whole stream if its hash differs.

    The consumer unpacks beside the current data and discards everything on this
    error, so a corrupted or truncated backup is never restored.
    """
    digest = hashlib.sha256()
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    try:
        for chunk in chunks:
            digest.update(chunk)
            yield decompressor.decompress(chunk)
    except zstandard.ZstdError as exc:
        raise ChecksumMismatch(f"the backup is corrupted (zstd: {exc})") from exc
    if digest.hexdigest() != expected_sha256:
        raise ChecksumMismatch(
            f"the backup's sha256 is {digest.hexdigest()}, expected {expected_sha256}: "
            "it is corrupted or truncated and will not be restored"
        )
    if not decompressor.eof:
        raise ChecksumMismatch("the backup is truncated")


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
