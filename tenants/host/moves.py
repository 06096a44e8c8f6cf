"""Moving a tenant to another host, the hosts' side (the control plane claims the
move and waits for it: tenants/moves.py). Three steps, each on the host whose disk
it needs, each queueing the next; any failure puts the tenant back on the source
as it was (move_abort).

1. move_out, on the source: its clients are held (PgBouncer's PAUSE: new ones
   wait in the pooler), the instance stops if it runs (those connected are
   disconnected, as by any restart), and its data is packed (tar, zstd, sha256)
   into this host's local store; the tenant now belongs to the target, and this
   pooler's entries for it become forwards to the target's pooler (still held).
2. move_in, on the target: fetches the pack, and the tenant's local backups, from
   the source's export server; unpacks; starts the instance only if it was
   running (a sleeping one stays asleep, its activator socket ready); routes it.
3. move_finish, on the source: lets the held clients go on (to the target, through
   the forward), removes the instance and the files that moved.

The forward keeps the connection string users already have working for
DBAAS_MOVE_FORWARD_DAYS; the API and the web page show the new one at once.
"""

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from dbaas.env import pki_dir
from tenants.backup_stores import get_store
from tenants.host import agent, exports
from tenants.host.backup_stream import Counter, compress, decompress_verified
from tenants.lifecycle import event_record, tenant_transition
from tenants.models import Backup, Move, Tenant
from unikernel_images.runtimes.base import InstanceState

log = logging.getLogger(__name__)
State = Tenant.State
ACTIVE = (Move.State.PAUSING, Move.State.COPYING, Move.State.FINISHING)


class MoveFailed(Exception):
    pass


def archive_key(move: Move) -> str:
    return f"moves/{move.tenant_id}/{move.pk}.tar.zst"


def move_out(move: Move) -> None:
    """Step 1, on the source: hold the clients, stop the instance, pack its data."""
    tenant = move.tenant
    runtime, bouncer, iid = agent.runtime_for(tenant), agent.pooler(), tenant.instance_id
    store = get_store("local", settings.DATA_DIR)
    key, counter = archive_key(move), Counter()
    with agent.instance_lock(tenant):
        Move.objects.filter(pk=move.pk).update(paused_at=timezone.now())

        def stop() -> None:
            if runtime.status(iid).state is InstanceState.RUNNING:
                runtime.stop(iid)

        bouncer.pause(agent.aliases(tenant), release=stop)
        with runtime.export_data(iid) as stream:
            stored = store.put(key, counter.hash_stored(compress(counter.count(stream.chunks()))))
    with agent.routing_change(move.source):
        Tenant.objects.filter(pk=tenant.pk).update(host=move.target)
        Move.objects.filter(pk=move.pk).update(
            state=Move.State.COPYING,
            archive_location=key,
            archive_sha256=counter.sha256.hexdigest(),
            archive_bytes=stored,
        )


def move_in(move: Move) -> None:
    """Step 2, on the target: fetch, unpack, start it if it was running, route it."""
    tenant = Tenant.objects.select_related("host", "plan").get(pk=move.tenant_id)
    source = move.source
    runtime, route, iid = agent.runtime_for(tenant), agent.routes(), tenant.instance_id
    spec = agent.instance_spec(tenant)
    started = time.monotonic()
    with agent.instance_lock(tenant):
        runtime.destroy(iid)  # what an earlier attempt left
        runtime.import_data(
            spec, decompress_verified(_fetch(source, move.archive_location), move.archive_sha256)
        )
        runtime.swap_in_imported(spec)
        runtime.drop_previous(iid)
        copied = _copy_local_backups(tenant, source)
        runtime.remember(spec)
        runtime.keep_reserve(iid, settings.DBAAS_DISK_RESERVE_MB << 20)
        if move.from_state == State.RUNNING:
            agent.instance_start(tenant)
            route.point(iid, runtime.socket_dir(iid))
        else:
            runtime.configure(spec)
            route.point(iid, route.activator_dir(iid))
            # A client forwarded the moment the move ends finds it to wake it.
            agent.wait_for(route.activator_socket(iid).exists, timeout=5)
        until = timezone.now() + timedelta(days=settings.DBAAS_MOVE_FORWARD_DAYS)
        with agent.routing_change(move.target):
            moved = tenant_transition(
                tenant=tenant,
                from_states=[State.MOVING],
                to_state=move.from_state,
                action="move",
                actor=move.requested_by,
                duration_ms=int((time.monotonic() - started) * 1000),
                reason=(
                    f"moved from host {source.name} to {move.target.name}; the connection "
                    f"string you had works until {until:%Y-%m-%d}, through the old host"
                ),
                **({"last_active_at": timezone.now()} if move.from_state == State.RUNNING else {}),
            )
            if not moved:
                raise MoveFailed(f"the tenant is no longer moving ({tenant.state})")
            Move.objects.filter(pk=move.pk).update(state=Move.State.FINISHING, forward_until=until)
    log.info("moved %s in: %d local backups copied", tenant, copied)


def _fetch(source, location: str):
    return exports.fetch(source.public_host, settings.DBAAS_EXPORTS_PORT, pki_dir(), location)


def _copy_local_backups(tenant: Tenant, source) -> int:
    """The tenant's backups in the source's own store, into this host's, checked
    against their sha256: its backups stay restorable and expire here."""
    store = get_store("local", settings.DATA_DIR)
    backups = Backup.objects.filter(tenant=tenant, store="local", state=Backup.State.DONE)
    copied = 0
    for backup in backups.exclude(location=""):
        counter = Counter()
        store.put(backup.location, counter.hash_stored(_fetch(source, backup.location)))
        if counter.sha256.hexdigest() != backup.sha256:
            store.delete(backup.location)
            raise MoveFailed(f"backup {backup.pk} arrived corrupted (sha256 differs)")
        copied += 1
    return copied


def move_finish(move: Move) -> None:
    """Step 3, on the source: the held clients go on to the target; what moved goes."""
    tenant = move.tenant
    agent.pooler_sync(move.source)  # its forward entries (rendered in move_out)
    for alias in agent.aliases(tenant):
        agent.pooler().resume(alias)
    resumed = timezone.now()
    _discard_here(move)
    paused = move.paused_at or resumed
    pause_ms = int((resumed - paused).total_seconds() * 1000)
    Move.objects.filter(pk=move.pk).update(
        state=Move.State.DONE, finished_at=timezone.now(), pause_ms=pause_ms
    )
    event_record(
        tenant=tenant,
        host=move.source,
        action="moved",
        actor=move.requested_by,
        message=f"from {move.source.name} to {move.target.name}; clients waited {pause_ms} ms",
        duration_ms=pause_ms,
    )


def _discard_here(move: Move) -> None:
    """The source's copy of what moved: instance, route, pack, local backups."""
    tenant = move.tenant
    agent.routes().remove(tenant.instance_id)
    agent.runtime_for(tenant).destroy(tenant.instance_id)
    store = get_store("local", settings.DATA_DIR)
    if move.archive_location:
        store.delete(move.archive_location)
    for backup in Backup.objects.filter(tenant=tenant, store="local").exclude(location=""):
        store.delete(backup.location)


def move_abort(move: Move, error: str) -> None:
    """On the source, after any step failed: the tenant is back here as it was (its
    instance started again if it was running), its clients go on, the move failed."""
    tenant = Tenant.objects.select_related("host", "plan").get(pk=move.tenant_id)
    runtime, route, iid = agent.runtime_for(tenant), agent.routes(), tenant.instance_id
    with agent.instance_lock(tenant):
        with agent.routing_change(move.source):
            Tenant.objects.filter(pk=tenant.pk).update(host=move.source)
            tenant_transition(
                tenant=tenant,
                from_states=[State.MOVING],
                to_state=move.from_state,
                action="move_failed",
                actor=move.requested_by,
                reason=f"could not move to {move.target.name}: {error}; it stays here",
            )
            Move.objects.filter(pk=move.pk).update(
                state=Move.State.FAILED, error=error[:2000], finished_at=timezone.now()
            )
        if move.from_state == State.RUNNING:
            agent.instance_start(tenant)
            route.point(iid, runtime.socket_dir(iid))
        else:
            route.point(iid, route.activator_dir(iid))
    for alias in agent.aliases(tenant):
        agent.pooler().resume(alias)
    if move.archive_location:
        get_store("local", settings.DATA_DIR).delete(move.archive_location)


def target_discard(move: Move) -> None:
    """On the target, after its step failed: what it unpacked and fetched goes
    (the tenant is not routed here: it is still moving, or back on the source)."""
    tenant = Tenant.objects.select_related("host", "plan").get(pk=move.tenant_id)
    agent.routes().remove(tenant.instance_id)
    agent.runtime_for(tenant).destroy(tenant.instance_id)
    store = get_store("local", settings.DATA_DIR)
    for backup in Backup.objects.filter(tenant=tenant, store="local").exclude(location=""):
        store.delete(backup.location)
