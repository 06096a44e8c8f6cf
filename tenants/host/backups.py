"""Backups on the host that holds the instance: making one (the instance's tar
stream, compressed with zstd as it streams, hashed: sha256 of the stored bytes, into
a store), restoring one (the hash checked while it unpacks; the current data
replaced only after the restored instance has started and answered), verifying
them, and cleaning up what a dead worker left. Requesting them is the control
plane's (tenants/backups.py)."""

import dataclasses
import logging
import os
import random
import time
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from tenants.backup_stores import get_store
from tenants.errors import for_tenant
from tenants.host import agent
from tenants.host.backup_stream import Counter, chunks_verified, compress
from tenants.lifecycle import event_record, tenant_transition
from tenants.models import Backup, Restore, Tenant
from unikernel_images import postgres_admin

log = logging.getLogger(__name__)
State = Tenant.State


def partials_discard(kinds: Iterable[str], *, now=None) -> int:
    """Remove from these stores what uploads cut short by a dead worker left behind."""
    now = now or timezone.now()
    started_before = now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 30)
    return sum(get_store(k, settings.DATA_DIR).discard_partials(started_before) for k in kinds)


def expired_discard(host_name: str) -> int:
    """Objects of this host's expired local backups still in the store: removed."""
    store = get_store("local", settings.DATA_DIR)
    expired = Backup.objects.filter(
        tenant__host__name=host_name, store="local", state=Backup.State.EXPIRED
    ).exclude(location="")
    found = [backup.location for backup in expired if store.exists(backup.location)]
    for location in found:
        store.delete(location)
    return len(found)


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
    runtime = agent.runtime_for(tenant)
    counter = Counter()
    started = time.monotonic()
    try:
        if logical:
            # pg_dump needs a running server: the user asked, so it may wake.
            socket_dir = agent.instance_wake(tenant, actor="export")
            kind = Backup.Kind.LOGICAL
            dump = postgres_admin.dump(socket_dir, tenant.database_name, major=tenant.major)
            with dump as stream:
                # The custom format is compressed already.
                stored = store.put(key, counter.hash_stored(counter.count(stream.chunks())))
        else:
            # The lock keeps a sleeping instance asleep (a wake waits) and a running
            # one from being put to sleep while its backup streams.
            with agent.instance_lock(tenant):
                kind = (
                    Backup.Kind.BASE
                    if runtime.status(tenant.instance_id).state == "running"
                    else Backup.Kind.COLD
                )
                with runtime.export_data(tenant.instance_id) as stream:
                    compressed = compress(counter.count(stream.chunks()))
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
    tenants/host/tasks.py), wherever the restore stopped."""
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
    runtime = agent.runtime_for(tenant)
    started = time.monotonic()

    def progress(text: str) -> None:
        Restore.objects.filter(pk=restore.pk).update(progress=text)

    try:
        spec = agent.instance_spec(tenant)
        progress("downloading, checking and unpacking")
        runtime.import_data(spec, chunks_verified(backup))
        with agent.instance_lock(tenant):
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
                agent.routes().point(tenant.instance_id, socket_dir)
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
    runtime = agent.runtime_for(tenant)
    spec = dataclasses.replace(
        agent.instance_spec(tenant),
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
        runtime.import_data(spec, chunks_verified(backup))
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


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
