"""Backups on the host that holds the instance: making one (the instance's tar
stream, compressed with zstd as it streams, hashed: sha256 of the stored bytes, into
a store), restoring one (the hash checked while it unpacks; the current data
replaced only after the restored instance has started and answered), verifying
them, and cleaning up what a dead worker left. The control plane requests them and
keeps their rows (tenants/backups.py): it sends the work here as a job (what to
back up, where to), and hears the outcome in a report."""

import dataclasses
import logging
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings

from tenants.backup_stores import get_store
from tenants.host import agent, report
from tenants.host.backup_stream import Counter, compress, decompress_verified
from tenants.host.spec import RUNNING, SLEEPING, TenantSpec
from unikernel_images import postgres_admin

log = logging.getLogger(__name__)


def partials_discard(kinds: Iterable[str], *, now: datetime | None = None) -> int:
    """Remove from these stores what uploads cut short by a dead worker left behind."""
    now = now or datetime.now(UTC)
    started_before = now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 30)
    return sum(get_store(k, settings.DATA_DIR).discard_partials(started_before) for k in kinds)


def expired_discard(locations: Iterable[str]) -> int:
    """Objects of this host's expired local backups still in the store: removed."""
    store = get_store("local", settings.DATA_DIR)
    found = [location for location in locations if store.exists(location)]
    for location in found:
        store.delete(location)
    return len(found)


def chunks_verified(backup: dict[str, Any]):
    """A backup's tar stream (`backup`: store, location, sha256), read from its
    store on this host, decompressed and checked."""
    store = get_store(backup["store"], settings.DATA_DIR)
    return decompress_verified(store.get(backup["location"]), backup["sha256"])


def backup_run(job: dict[str, Any], tenant: TenantSpec) -> None:
    """Make the backup the job describes (id, kind, store, key); the outcome goes to
    the control plane: `done` with sizes and hash, or `failed` with why."""
    backup_id, key = job["id"], job["key"]
    report.backup(backup_id, ["pending"], {"state": "running", "started_at": time.time()})
    store = get_store(job["store"], settings.DATA_DIR)
    runtime = agent.runtime_for(tenant)
    counter = Counter()
    started = time.monotonic()
    try:
        if job["kind"] == "logical":
            # pg_dump needs a running server: the user asked, so it may wake.
            agent.instance_wake(tenant.instance_id, actor="export")
            kind = "logical"
            dump = postgres_admin.dump(
                runtime.admin_socket_dir(tenant.instance_id),
                tenant.database_name,
                major=tenant.major,
            )
            with dump as stream:
                # The custom format is compressed already.
                stored = store.put(key, counter.hash_stored(counter.count(stream.chunks())))
        else:
            # The lock keeps a sleeping instance asleep (a wake waits) and a running
            # one from being put to sleep while its backup streams.
            with agent.instance_lock(tenant):
                running = runtime.status(tenant.instance_id).state == "running"
                kind = "base" if running else "cold"
                with runtime.export_data(tenant.instance_id) as stream:
                    compressed = compress(counter.count(stream.chunks()))
                    stored = store.put(key, counter.hash_stored(compressed))
    except Exception as exc:
        log.exception("backup %s failed", backup_id)
        store.delete(key)
        report.backup(
            backup_id,
            ["pending", "running"],
            {"state": "failed", "error": str(exc)[:5000], "finished_at": time.time()},
        )
        report.event(tenant.pk, "backup", "worker", f"#{backup_id} failed: {exc}", _ms(started))
        return
    report.backup(
        backup_id,
        ["running"],
        {
            "state": "done",
            "kind": kind,
            "location": key,
            "size_bytes": counter.raw,
            "compressed_bytes": stored,
            "sha256": counter.sha256.hexdigest(),
            "finished_at": time.time(),
        },
    )
    report.event(
        tenant.pk,
        "backup",
        "worker",
        f"#{backup_id} {kind}: {counter.raw} bytes, {stored} stored",
        _ms(started),
    )


def restore_run(job: dict[str, Any], tenant: TenantSpec) -> None:
    """Unpack and check the backup (`job["backup"]`) beside the current data, then
    swap; the current data is kept until the restored instance has started and
    answered."""
    restore_id, backup = job["id"], job["backup"]
    report.restore(restore_id, ["pending"], {"state": "running"})
    runtime = agent.runtime_for(tenant)
    started = time.monotonic()

    def progress(text: str) -> None:
        report.restore(restore_id, ["running"], {"progress": text})

    try:
        spec = agent.instance_spec(tenant)
        progress("downloading, checking and unpacking")
        runtime.import_data(spec, chunks_verified(backup))
        with agent.instance_lock(tenant):
            was_running = runtime.status(tenant.instance_id).state == "running"
            progress("swapping in the restored data")
            runtime.stop(tenant.instance_id)
            runtime.swap_in_imported(spec)
            try:
                runtime.start(spec)
                admin_dir = runtime.admin_socket_dir(tenant.instance_id)
                # The owner's password may have changed since the backup.
                postgres_admin.set_role_secret(
                    admin_dir, role=tenant.role_name, secret=tenant.scram_secret
                )
                with postgres_admin.connect(admin_dir, dbname=tenant.database_name) as conn:
                    conn.execute("SELECT 1")
            except Exception:
                runtime.swap_back(spec)
                if was_running:
                    runtime.start(spec)
                raise
            runtime.drop_previous(tenant.instance_id)
            if agent.store().state(tenant.instance_id) == SLEEPING:
                agent.routes().point(tenant.instance_id, runtime.socket_dir(tenant.instance_id))
                agent.state_change(
                    tenant, SLEEPING, RUNNING, action="wake", actor="restore", active=True
                )
    except Exception as exc:
        log.exception("restore %s failed", restore_id)
        runtime.drop_previous(tenant.instance_id)
        report.restore(
            restore_id,
            ["pending", "running"],
            {"state": "failed", "error": str(exc)[:5000], "finished_at": time.time()},
        )
        report.event(
            tenant.pk,
            "restore",
            "worker",
            f"backup #{backup['id']} refused: {exc}",
            _ms(started),
        )
        return
    report.restore(
        restore_id, ["running"], {"state": "done", "progress": "done", "finished_at": time.time()}
    )
    # The restored catalog has the storage setting of its day: look again.
    agent.store().put(tenant.but(storage_read_only=None), decided_here=True)
    report.measured(tenant.pk, {"storage_read_only": None})
    report.event(tenant.pk, "restore", "worker", f"restored backup #{backup['id']}", _ms(started))


def backup_verify(backup: dict[str, Any], tenant: TenantSpec) -> tuple[bool, str]:
    """Restore the backup into a scratch instance and run pg_amcheck on every
    database in it. A corrupted or truncated backup (hash, zstd or amcheck) is
    reported on its row and as an event; it is never restored into its tenant."""
    runtime = agent.runtime_for(tenant)
    spec = dataclasses.replace(
        agent.instance_spec(tenant),
        instance_id=f"verify-{backup['id']}",
        # Its own uid, out of the tenants' range: a scratch copy is no tenant.
        uid=(
            settings.DBAAS_TENANT_UID_BASE + 1_000_000_000 + backup["id"]
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
            runtime.admin_socket_dir(spec.instance_id), major=spec.image.major
        )
        ok = True
    except Exception as exc:
        ok, message = False, str(exc)[:5000]
        log.error("backup %s of %s failed verification: %s", backup["id"], tenant, message)
    finally:
        runtime.destroy(spec.instance_id)
    report.backup(
        backup["id"],
        ["done"],
        {"verified_at": time.time(), "verified_ok": ok, "verify_message": message},
    )
    verdict = "ok" if ok else "CORRUPT"
    report.event(tenant.pk, "backup_verify", "verify", f"#{backup['id']} {verdict}: {message}")
    return ok, message


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
