"""Moving a tenant to another host, the hosts' side (the control plane claims the
move and waits for it: tenants/moves.py). Three steps, each on the host whose disk
it needs, each queueing the next; any failure puts the tenant back on the source
as it was (move_abort). Each step reports to the control plane (report.move).

1. move_out, on the source: its clients are held (PgBouncer's PAUSE: new ones
   wait in the pooler), the instance stops if it runs (those connected are
   disconnected, as by any restart), and its data is packed (tar, zstd, sha256)
   into this host's local store; this pooler's entries for it become forwards to
   the target's pooler (still held).
2. move_in, on the target: fetches the pack, and the tenant's local backups, from
   the source's export server; unpacks; starts the instance only if it was
   running (a sleeping one stays asleep, its activator socket ready); routes it.
3. move_finish, on the source: lets the held clients go on (to the target, through
   the forward), removes the instance and the files that moved.

The job (a dict) says: id, from_state, requested_by, source and target (name,
address, pooler port), the tenant's local backups (id, location, sha256), and, from
step 1 on, where the pack is, its hash, and the URLs (signed by the source with its
own key) at which the target fetches the pack and the backups from the source.
"""

import logging
import time
from typing import Any

from django.conf import settings

from dbaas.env import pki_dir
from tenants.backup_stores import get_store
from tenants.host import agent, exports, identity, report
from tenants.host.backup_stream import Counter, compress, decompress_verified
from tenants.host.spec import MOVING, RUNNING, TenantSpec
from unikernel_images.runtimes.base import InstanceState

log = logging.getLogger(__name__)


class MoveFailed(Exception):
    pass


def archive_key(job: dict[str, Any], tenant: TenantSpec) -> str:
    return f"moves/{tenant.pk}/{job['id']}.tar.zst"


def move_out(job: dict[str, Any], tenant: TenantSpec) -> dict[str, Any]:
    """Step 1, on the source: hold the clients, stop the instance, pack its data.
    Returns the job with the pack's location and hash."""
    runtime, bouncer, iid = agent.runtime_for(tenant), agent.pooler_for(tenant), tenant.instance_id
    store = get_store("local", settings.DATA_DIR)
    key, counter = archive_key(job, tenant), Counter()
    paused_at = time.time()
    with agent.instance_lock(tenant):
        agent.store().put(tenant, state=MOVING)

        def stop() -> None:
            if runtime.status(iid).state is InstanceState.RUNNING:
                runtime.stop(iid)

        bouncer.pause(agent.aliases(tenant), release=stop)
        with runtime.export_data(iid) as stream:
            stored = store.put(key, counter.hash_stored(compress(counter.count(stream.chunks()))))
    # The target fetches the pack and the backups from this host's export server,
    # at URLs this host signs with its own key (good for a few minutes).
    signing = identity.exports_key(identity.own_token().key)
    fetched = [key, *(backup["location"] for backup in job["backups"])]
    job = job | {
        "archive_location": key,
        "archive_sha256": counter.sha256.hexdigest(),
        "archive_bytes": stored,
        "paused_at": paused_at,
        "fetch": {location: exports.signed_path(signing, location) for location in fetched},
    }
    # From here the source's entries forward to the target (still paused).
    target = job["target"]
    until = time.time() + settings.DBAAS_MOVE_FORWARD_DAYS * 86400
    held = agent.store()
    held.forward_put(tenant, target["public_host"], target["pooler_port"], until)
    held.remove(iid)
    agent.pooler_sync(tenant)
    report.move(
        job["id"],
        ["pausing"],
        {
            "state": "copying",
            "archive_location": key,
            "archive_sha256": job["archive_sha256"],
            "archive_bytes": stored,
            "paused_at": paused_at,
        },
    )
    return job


def move_in(job: dict[str, Any], tenant: TenantSpec) -> None:
    """Step 2, on the target: fetch, unpack, start it if it was running, route it."""
    runtime, route, iid = agent.runtime_for(tenant), agent.routes(), tenant.instance_id
    spec = agent.instance_spec(tenant)
    started = time.monotonic()
    with agent.instance_lock(tenant):
        runtime.destroy(iid)  # what an earlier attempt left
        archive = _fetch(job, job["archive_location"])
        runtime.import_data(spec, decompress_verified(archive, job["archive_sha256"]))
        runtime.swap_in_imported(spec)
        runtime.drop_previous(iid)
        copied = _copy_local_backups(job)
        runtime.remember(spec)
        runtime.keep_reserve(iid, settings.DBAAS_DISK_RESERVE_MB << 20)
        held = agent.store()
        held.forward_remove(iid)  # moved away from here once, and back now
        held.put(tenant, state=job["from_state"])
        if job["from_state"] == RUNNING:
            agent.instance_start(tenant)
            route.point(iid, runtime.socket_dir(iid))
        else:
            runtime.configure(spec)
            route.point(iid, route.activator_dir(iid))
            # A client forwarded the moment the move ends finds it to wake it.
            agent.wait_for(route.activator_socket(iid).exists, timeout=5)
        agent.pooler_sync(tenant)
    until = time.time() + settings.DBAAS_MOVE_FORWARD_DAYS * 86400
    report.move(
        job["id"],
        ["copying"],
        {"state": "finishing", "forward_until": until, "duration_ms": _ms(started)},
    )
    log.info("moved %s in: %d local backups copied", iid, copied)


def _fetch(job: dict[str, Any], location: str):
    """An object of the source's own store, at the URL the source signed for it
    (move_out)."""
    return exports.fetch(
        job["source"]["public_host"],
        settings.DBAAS_EXPORTS_PORT,
        pki_dir() / "ca.crt",
        job["fetch"][location],
    )


def _copy_local_backups(job: dict[str, Any]) -> int:
    """The tenant's backups in the source's own store, into this host's, checked
    against their sha256: its backups stay restorable and expire here."""
    store = get_store("local", settings.DATA_DIR)
    backups = job["backups"]
    for backup in backups:
        counter = Counter()
        store.put(backup["location"], counter.hash_stored(_fetch(job, backup["location"])))
        if counter.sha256.hexdigest() != backup["sha256"]:
            store.delete(backup["location"])
            raise MoveFailed(f"backup {backup['id']} arrived corrupted (sha256 differs)")
    return len(backups)


def move_finish(job: dict[str, Any], tenant: TenantSpec) -> None:
    """Step 3, on the source: the held clients go on to the target; what moved goes."""
    agent.pooler_sync(tenant)  # its forward entries (written in move_out)
    for alias in agent.aliases(tenant):
        agent.pooler_for(tenant).resume(alias)
    pause_ms = int((time.time() - job.get("paused_at", time.time())) * 1000)
    _discard_here(job, tenant)
    report.move(job["id"], ["finishing"], {"state": "done", "pause_ms": pause_ms})


def _discard_here(job: dict[str, Any], tenant: TenantSpec) -> None:
    """The source's copy of what moved: instance, route, pack, local backups."""
    agent.routes().remove(tenant.instance_id)
    agent.runtime_for(tenant).destroy(tenant.instance_id)
    store = get_store("local", settings.DATA_DIR)
    if job.get("archive_location"):
        store.delete(job["archive_location"])
    for backup in job["backups"]:
        store.delete(backup["location"])


def move_abort(job: dict[str, Any], tenant: TenantSpec, error: str) -> None:
    """On the source, after any step failed: the tenant is back here as it was (its
    instance started again if it was running), its clients go on, the move failed."""
    runtime, route, iid = agent.runtime_for(tenant), agent.routes(), tenant.instance_id
    held = agent.store()
    with agent.instance_lock(tenant):
        held.forward_remove(iid)
        held.put(tenant, state=job["from_state"])
        if job["from_state"] == RUNNING:
            agent.instance_start(tenant)
            route.point(iid, runtime.socket_dir(iid))
        else:
            route.point(iid, route.activator_dir(iid))
        agent.pooler_sync(tenant)
    for alias in agent.aliases(tenant):
        agent.pooler_for(tenant).resume(alias)
    if job.get("archive_location"):
        get_store("local", settings.DATA_DIR).delete(job["archive_location"])
    report.move(job["id"], ["pausing", "copying"], {"state": "failed", "error": error[:2000]})


def target_discard(job: dict[str, Any], tenant: TenantSpec) -> None:
    """On the target, after its step failed: what it unpacked and fetched goes."""
    agent.store().remove(tenant.instance_id)
    agent.routes().remove(tenant.instance_id)
    agent.runtime_for(tenant).destroy(tenant.instance_id)
    store = get_store("local", settings.DATA_DIR)
    for backup in job["backups"]:
        store.delete(backup["location"])
    agent.pooler_sync(tenant)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
