"""What the host agent (the Celery worker of a host's queue, and the host's other
processes) does to this machine for a tenant: its instance through the runtime, its
entry in the host's PgBouncer.

It works from what the host holds (tenants/host/store.py: each tenant's spec, as
the control plane sent it, and the state the host has it in), never from the
control plane's database, and says what it did in reports (tenants/host/report.py).
Turns specs into plain values for `unikernel_images` and `poolers`.
"""

import concurrent.futures
import errno
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from dbaas import locks
from dbaas.env import data_dir, pki_dir, pooler_user
from poolers import tls
from poolers.pgbouncer import SERVER_COLUMNS, DatabaseEntry, Owner, PgBouncer, UserEntry
from poolers.routes import Routes
from tenants.host import report
from tenants.host.spec import (
    MOVING,
    PROVISIONING,
    RUNNING,
    SLEEPING,
    SUSPENDED,
    TenantSpec,
    postgres_config,
)
from tenants.host.store import HostStore
from unikernel_images import postgres_admin
from unikernel_images.cgroups import Limits
from unikernel_images.image import default_image_name, load_image
from unikernel_images.paths import images_dir, instances_dir
from unikernel_images.runtimes import get_runtime
from unikernel_images.runtimes.base import InstanceError, InstanceSpec, InstanceState, Runtime

log = logging.getLogger(__name__)

# Every owner reaches the maintenance database of its own server by this name, as
# PostgreSQL tools expect (Django's test runner runs CREATE and DROP DATABASE there):
# one pooler entry for all, which the activator routes by the user logging in.
MAINTENANCE_DATABASE = "postgres"

# States whose tenants have an entry in the pooler. A provisioning tenant is in
# it before it is running, so that a concurrent sync (reconcile) never drops the
# entry of a tenant whose connection string is about to be handed out; nobody
# has its credentials until then, so the early entry is harmless. A moving tenant
# keeps its entry on the host that has it (its clients are held there, see
# tenants/host/moves.py).
ROUTED_STATES = (PROVISIONING, RUNNING, SLEEPING, MOVING)


def store() -> HostStore:
    """What this host holds of its tenants."""
    return HostStore(data_dir() / "host.sqlite3")


def pooler(shard: int = 0) -> PgBouncer:
    """One of the host's PgBouncers (shard 0 holds what they share: certificate,
    admin password)."""
    return PgBouncer(
        root=data_dir() / "pgbouncer",
        listen_addr=settings.DBAAS_PGBOUNCER_LISTEN,
        listen_port=settings.DBAAS_PGBOUNCER_PORT + shard,
        service_user=pooler_user(),
        binary=settings.DBAAS_PGBOUNCER_BIN,
        pki=pki_dir(),
        shard=shard,
        login_timeout=settings.DBAAS_POOLER_LOGIN_TIMEOUT,
    )


def poolers() -> list[PgBouncer]:
    return [pooler(shard) for shard in range(settings.DBAAS_POOLER_SHARDS)]


def shard_of(tenant_pk: int) -> int:
    """Which of the host's PgBouncers has the tenant (the control plane's
    Host.pooler_port_for says the same to clients)."""
    return tenant_pk % settings.DBAAS_POOLER_SHARDS


def pooler_for(tenant: TenantSpec) -> PgBouncer:
    return pooler(shard_of(tenant.pk))


def pooler_pools() -> dict[tuple[str, str], dict]:
    """SHOW POOLS of every shard, by (database, user): each tenant's names and role
    are in its own shard only (the maintenance database is in all of them, each
    time with other users)."""
    pools: dict[tuple[str, str], dict] = {}
    for bouncer in poolers():
        pools.update(bouncer.pools())
    return pools


def pooler_stats() -> dict[str, dict]:
    """SHOW STATS of every shard, by database name (the maintenance database's row
    is one shard's: nothing reads it)."""
    stats: dict[str, dict] = {}
    for bouncer in poolers():
        stats.update(bouncer.stats())
    return stats


def pooler_up() -> bool:
    return all(bouncer.is_up() for bouncer in poolers())


def instance_for_role(role: str) -> str | None:
    """The instance of the routed tenant whose owner role this is, on this host."""
    return store().instance_for_role(role, ROUTED_STATES)


def tenant_pk_for_instance(instance_id: str) -> int:
    """The pk of the tenant whose instance is `t<pk>` (see TenantSpec.instance_id)."""
    return int(instance_id.removeprefix("t"))


def routes() -> Routes:
    return Routes(data_dir() / "pgbouncer" / "routes", pooler_user())


# Below this much free space on the data disk the host reports its disk unhealthy.
DISK_LOW_BYTES = 1 << 30


def host_health() -> dict[str, str]:
    """How this host's parts are, as its heartbeat reports them: `ok`, or `error: ...`."""
    down = [str(bouncer.listen_port) for bouncer in poolers() if not bouncer.is_up()]
    checks = {"pooler": f"error: pgbouncer on {', '.join(down)} does not answer" if down else "ok"}
    free = shutil.disk_usage(data_dir()).free
    checks["disk"] = "ok" if free >= DISK_LOW_BYTES else f"error: {free >> 20} MB free"
    return checks


def runtime_for(tenant: TenantSpec) -> Runtime:
    return get_runtime(tenant.runtime, instances_dir())


def instance_spec(tenant: TenantSpec) -> InstanceSpec:
    root = os.geteuid() == 0
    return InstanceSpec(
        instance_id=tenant.instance_id,
        image=load_image(images_dir(), tenant.image),
        uid=settings.DBAAS_TENANT_UID_BASE + tenant.pk if root else None,
        socket_group=pooler_user() if root else None,
        # What the pooler may open, and a few slots for the platform's own sessions.
        max_connections=_server_connections_cap(tenant) + 5,
        # The owner, to any database it may CONNECT to: its own, and those it
        # creates; the pooler routes only those (CONNECT to the maintenance
        # databases is revoked in the image).
        logins=(("all", tenant.role_name),),
        registrar_dir=routes().registrar_dir(tenant.instance_id),
        # The host agent (every process of the platform's that runs as root).
        platform_accounts=("root",) if root else (),
        allowed_extensions=tuple(tenant.plan.extension_list),
        storage_full=storage_full_message(tenant) if tenant.storage_read_only else "",
        limits=Limits(
            memory_bytes=tenant.plan.memory_limit_mb << 20,
            cpus=tenant.plan.cpu_limit,
            processes=tenant.plan.process_limit,
        ),
        temp_file_limit_mb=tenant.plan.temp_file_limit_mb,
        work_mem_max_mb=tenant.plan.work_mem_max_mb,
        extra_settings=postgres_config(tenant.plan.postgres_settings),
    )


def storage_full_message(tenant: TenantSpec) -> str:
    return (
        f"this database is over the {tenant.plan.name} plan's storage limit of "
        f"{tenant.plan.storage_limit_mb} MB"
    )


def instance_provision(tenant: TenantSpec) -> None:
    """Copy the template, start, create the owner role, add to the pooler."""
    runtime = runtime_for(tenant)
    spec = instance_spec(tenant)
    store().put(tenant, state=PROVISIONING)
    with _meanwhile(pooler_sync, tenant):
        # A retried task finds the leftovers of its first attempt: nothing in them
        # is worth keeping, since the tenant never served a query.
        runtime.destroy(spec.instance_id)
        runtime.create(spec)
        _start(runtime, spec)
        postgres_admin.bootstrap_owner(
            runtime.admin_socket_dir(spec.instance_id),
            role=tenant.role_name,
            database=tenant.database_name,
            secret=tenant.scram_secret,
            connection_limit=_server_connections_cap(tenant),
        )
        routes().point(tenant.instance_id, runtime.socket_dir(spec.instance_id))


def instance_provision_from_backup(
    tenant: TenantSpec, chunks, source_role: str, source_database: str
) -> None:
    """Like instance_provision, with the data of a backup (`chunks`: its tar stream,
    checked against its sha256 as it is read) instead of the image's template; the
    backup's owner and database (`source_*`) are renamed to the tenant's."""
    runtime = runtime_for(tenant)
    spec = instance_spec(tenant)
    store().put(tenant, state=PROVISIONING)
    with _meanwhile(pooler_sync, tenant):
        runtime.destroy(spec.instance_id)
        runtime.import_data(spec, chunks)
        runtime.swap_in_imported(spec)
        runtime.drop_previous(spec.instance_id)
        _start(runtime, spec)
        if source_role != tenant.role_name:
            postgres_admin.rename_owner(
                runtime.admin_socket_dir(spec.instance_id),
                old_role=source_role,
                old_database=source_database,
                role=tenant.role_name,
                database=tenant.database_name,
                secret=tenant.scram_secret,
            )
        routes().point(tenant.instance_id, runtime.socket_dir(spec.instance_id))


@contextmanager
def _meanwhile(work: Callable[..., object], *args: object) -> Iterator[None]:
    """Run `work(*args)` on this process's side thread while the block runs; its
    error, if the block had none, is raised after it.

    A provision has the pooler learn of the tenant while its server starts: the
    render and RELOAD of a shard of 1,250 tenants take ~30 ms, off the create's
    path (PgBouncer works on one core while postgres starts on the other). The
    entry is harmless before the server is up: its route leads nowhere yet, and
    nobody has the password until the create answers."""
    future = _side_thread(os.getpid()).submit(work, *args)
    try:
        yield
    finally:
        concurrent.futures.wait([future])
    future.result()


@functools.cache
def _side_thread(pid: int) -> concurrent.futures.ThreadPoolExecutor:
    """One per process (not one made before a fork), kept: a thread's store
    connection lives as long as it does."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="side")


def spares_refill(runtime_kind: str) -> int:
    """Keep DBAAS_SPARE_INSTANCES template copies ready so provisioning skips the copy."""
    runtime = get_runtime(runtime_kind, instances_dir())
    return runtime.prepare_spares(
        load_image(images_dir(), default_image_name()), settings.DBAAS_SPARE_INSTANCES
    )


def instance_destroy(tenant: TenantSpec) -> None:
    """Forget the tenant, remove it from the pooler first, then its instance and data
    (the names of the databases it made are free again)."""
    store().remove(tenant.instance_id)
    pooler_sync(tenant)
    instance_remove(tenant)


def instance_remove(tenant: TenantSpec) -> None:
    """The instance, its data and its route; the pooler entry is the caller's."""
    routes().remove(tenant.instance_id)
    runtime_for(tenant).destroy(tenant.instance_id)


def instance_start(tenant: TenantSpec) -> str:
    """Start with the current settings (the plan may have changed since). Returns
    what the owner should know about the start ("" if nothing: a full disk, say),
    for the state change that follows to keep as its reason."""
    runtime = runtime_for(tenant)
    spec = instance_spec(tenant)

    def start() -> None:
        runtime.configure(spec)
        _start(runtime, spec)

    try:
        start()
        return ""
    except (InstanceError, OSError) as exc:
        # A full disk (its config could not be written, or the server could not
        # recover): give the instance its reserve, and try once more.
        full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        full = full or stop_reason(runtime.log_file(spec.instance_id)).startswith("disk full")
        freed = (
            runtime.release_reserve(spec.instance_id, settings.DBAAS_DISK_RESERVE_MB << 20)
            if full
            else 0
        )
        if not freed:
            raise
        note = disk_full_note(freed, "it could not start")
        report.note(tenant.pk, note)
        report.event(tenant.pk, "disk_full", "host", f"could not start: {exc}", 0)
        start()
        return note


def _start(runtime: Runtime, spec: InstanceSpec) -> None:
    """Every start: the spec kept beside the instance, its disk reserve set aside
    (for a full disk), then the start."""
    runtime.remember(spec)
    runtime.keep_reserve(spec.instance_id, settings.DBAAS_DISK_RESERVE_MB << 20)
    runtime.start(spec)


def instance_apply_secret(tenant: TenantSpec, secret: str) -> None:
    """The owner's new password: in its server, then in the pooler."""
    runtime = runtime_for(tenant)
    postgres_admin.set_role_secret(
        runtime.admin_socket_dir(tenant.instance_id), role=tenant.role_name, secret=secret
    )
    store().put(tenant.but(scram_secret=secret))
    pooler_sync(tenant)


def pooler_sync(tenant: TenantSpec | None = None) -> bool:
    """Render the poolers' files from what the host holds (only the tenant's shard's,
    if one is named); RELOAD those that changed. True if any did."""
    shards = [shard_of(tenant.pk)] if tenant else range(settings.DBAAS_POOLER_SHARDS)
    forwards = store().forwards()
    changed = False
    for shard in shards:
        bouncer = pooler(shard)
        with bouncer.config_lock():
            if _render(bouncer, forwards):
                bouncer.reload()
                changed = True
    return changed


def register() -> None:
    """Tell the control plane this host has started: where clients reach it, how
    many databases it takes, and, unless this machine holds the platform's CA or
    already has a certificate for its address from the control plane, a request for
    one (tasks.host_certificate installs what comes back)."""
    public_host = settings.DBAAS_PUBLIC_HOST
    report.registered(
        public_host,
        settings.DBAAS_PGBOUNCER_PORT,
        settings.DBAAS_HOST_CAPACITY,
        tls.certificate_request(pki_dir(), public_host),
        settings.DBAAS_POOLER_SHARDS,
    )


def pooler_render() -> list[PgBouncer]:
    """Write the poolers' files, for the PgBouncers about to start."""
    bouncers = poolers()
    bouncers[0].prepare(public_host=settings.DBAAS_PUBLIC_HOST)
    forwards = store().forwards()
    for bouncer in bouncers:
        bouncer.prepare_shard()
        with bouncer.config_lock():
            _render(bouncer, forwards)
    return bouncers


def _render(bouncer: PgBouncer, all_forwards: list[tuple[TenantSpec, str, int]]) -> bool:
    """One shard's files: its tenants, and the forwards (of the host's, read once
    for all shards) of those moved away."""
    share = (bouncer.shard, settings.DBAAS_POOLER_SHARDS)
    routed = [spec for spec, _state in store().all(ROUTED_STATES, shard=share)]
    forwards = [f for f in all_forwards if shard_of(f[0].pk) == bouncer.shard]
    maintenance = DatabaseEntry(
        name=MAINTENANCE_DATABASE,
        dbname=MAINTENANCE_DATABASE,
        socket_dir=routes().maintenance_dir(),
        pool_size=2,
        max_connections=0,
        owner=None,
    )
    here = {spec.instance_id for spec in routed}
    forwarded = [(spec, a, p) for spec, a, p in forwards if spec.instance_id not in here]
    # Unchanged since this process rendered it, files as it left them: nothing to
    # do (reconcile syncs every shard at every tick; the store hands back the same
    # spec objects for unchanged tenants, so this compares pointers).
    if _rendered.get(bouncer.ini) == (routed, forwarded, bouncer.files_state()):
        return False
    # Entries made of tenants this shard no longer serves (deleted, moved away
    # and forgotten) are not kept for the life of the process.
    current = here | {spec.instance_id for spec, _a, _p in forwarded}
    kept = _owners.setdefault(bouncer.shard, {})
    for gone in kept.keys() - current:  # a set difference: thousands per render
        del kept[gone]
    changed = bouncer.write_config(
        shared=[maintenance],
        owners=[
            *(_owner_of(kept, t) for t in routed),
            *(_owner_of(kept, t, forward_to=(a, p)) for t, a, p in forwarded),
        ],
    )
    _rendered[bouncer.ini] = (routed, forwarded, bouncer.files_state())
    return changed


# What each shard's files were last rendered from, by this process (_render).
_rendered: dict[Path, tuple] = {}


def _owner_of(
    kept: dict[str, tuple[TenantSpec, tuple[str, int] | None, Owner]],
    tenant: TenantSpec,
    forward_to: tuple[str, int] | None = None,
) -> Owner:
    """The tenant's user and database entries, made again only for a tenant whose
    spec changed since this process made them (`kept`: its shard's, in _owners; a
    shard holds thousands, one changes at a time), and then the same object (the
    pooler keeps its rendered lines by it)."""
    cached = kept.get(tenant.instance_id)
    if cached is not None and cached[0] is tenant and cached[1] == forward_to:
        return cached[2]
    owner = Owner(
        UserEntry(
            tenant.role_name,
            tenant.scram_secret,
            max_server_connections=_server_connections_cap(tenant),
        ),
        tuple(_database_entries(tenant, forward_to)),
    )
    kept[tenant.instance_id] = (tenant, forward_to, owner)
    return owner


# The owner made of each tenant's spec (the same object while unchanged: the host
# store hands it back), by pooler shard and instance id.
_owners: dict[int, dict[str, tuple[TenantSpec, tuple[str, int] | None, Owner]]] = {}


def _server_connections_cap(tenant: TenantSpec) -> int:
    """What the owner's server takes from the pooler: the plan's session
    connections plus one transaction-mode pool (postgres has 5 more for the
    platform, see instance_spec)."""
    return tenant.plan.connection_limit + tenant.plan.pool_size


def _database_entries(
    tenant: TenantSpec, forward_to: tuple[str, int] | None = None
) -> list[DatabaseEntry]:
    """For each of the tenant's databases, the one the platform made and those it
    made itself: the default (session) entry, and the transaction-mode one for
    serverless apps. Forwarded (a tenant moved away): each to the same name on the
    pooler of the host that has it now, over TLS."""
    entries = []
    plan, link = tenant.plan, routes().link(tenant.instance_id)
    for dbname in database_names(tenant):
        # Session mode: one server connection per client, as many as the plan
        # says; the next client is refused at once rather than left waiting.
        entries.append(
            DatabaseEntry(
                name=dbname,
                dbname=dbname,
                socket_dir=link,
                owner=tenant.role_name,
                pool_size=plan.connection_limit,
                max_connections=plan.connection_limit,
                max_clients=plan.connection_limit,
                forward_to=forward_to,
            )
        )
        if pooled := pooled_alias(dbname):
            # Transaction mode: any number of clients share the plan's pool.
            entries.append(
                DatabaseEntry(
                    name=pooled,
                    dbname=pooled if forward_to else dbname,
                    socket_dir=link,
                    owner=tenant.role_name,
                    pool_mode="transaction",
                    pool_size=plan.pool_size,
                    max_connections=plan.pool_size,
                    forward_to=forward_to,
                )
            )
    return entries


def pooled_alias(dbname: str) -> str | None:
    """The transaction-mode name of a database, `<name>_pooled`; None for a name too
    long to have one (PgBouncer keeps 63 bytes of a name, and we use 62; Prisma's
    shadow databases, 61 characters, are used in session mode)."""
    alias = f"{dbname}_pooled"
    return alias if len(alias) <= 62 else None


def database_names(tenant: TenantSpec) -> list[str]:
    return [tenant.database_name, *tenant.databases]


# -- scale to zero ----------------------------------------------------------------------


@contextmanager
def instance_lock(tenant: TenantSpec | str, timeout: float | None = None) -> Iterator[bool]:
    """Serialise sleep, wake and repair of one instance across processes.

    Waits forever (timeout None) or up to `timeout` seconds (0: not at all), then
    yields whether it got the lock. The lock dies with its holder, so a killed
    worker or activator never leaves it taken.
    """
    iid = tenant if isinstance(tenant, str) else tenant.instance_id
    with locks.held(iid, timeout) as got:
        yield got


def pooler_reconnect(tenant: TenantSpec) -> None:
    """Have PgBouncer replace the tenant's server connections as they are released
    (idle ones at once), so that new ones follow the current route."""
    pooler_for(tenant).reconnect(*aliases(tenant))


def aliases(tenant: TenantSpec) -> list[str]:
    """Every name the pooler knows the tenant's databases by."""
    names = database_names(tenant)
    return names + [alias for name in names if (alias := pooled_alias(name))]


def pooler_in_use(pools: dict[tuple[str, str], dict], tenant: TenantSpec) -> bool:
    """Is a client connected in session mode, or in a transaction in pooled mode?

    A pooled-mode client that is between transactions does not keep the tenant
    awake: its next transaction wakes it.
    """
    role = tenant.role_name
    for name in [*database_names(tenant), MAINTENANCE_DATABASE]:
        session = pools.get((name, role), {})
        pooled = pools.get((pooled_alias(name) or "", role), {})
        if (
            session.get("cl_active", 0)
            or session.get("cl_waiting", 0)
            or pooled.get("cl_waiting", 0)
            or pooled.get("sv_active", 0)
        ):
            return True
    return False


def _server_connections(pools: dict[tuple[str, str], dict], tenant: TenantSpec) -> int:
    return sum(
        pools.get((alias, tenant.role_name), {}).get(column, 0)
        for alias in [*aliases(tenant), MAINTENANCE_DATABASE]
        for column in SERVER_COLUMNS
    )


def pooler_xact_count(stats: dict[str, dict], tenant: TenantSpec) -> int:
    return sum(int(stats.get(alias, {}).get("total_xact_count", 0)) for alias in aliases(tenant))


class Busy(Exception):
    """The tenant is in use; it stays awake."""


def state_change(
    tenant: TenantSpec,
    from_state: str,
    to_state: str,
    *,
    action: str,
    actor: str,
    active: bool = False,
    idle_from_now: bool = False,
    **kwargs,
) -> None:
    """The tenant is in `to_state` here now: kept, and reported (numbered, so that
    the control plane applies this report after any earlier one). `active`: a
    client's doing (a wake), reported as its last activity; `idle_from_now`: its
    idle time counts from now, but no client has used it (made, unsuspended), so
    that a database never used is known as such (and not backed up)."""
    seq = store().set_state(tenant.instance_id, to_state, active=active or idle_from_now)
    fields = dict(kwargs.pop("fields", {}))
    if active:
        fields["last_active_at"] = time.time()
    report.transition(
        tenant.pk, seq, [from_state], to_state, action=action, actor=actor, fields=fields, **kwargs
    )


def instance_sleep(instance_id: str, actor: str, drain_timeout: float = 3.0) -> str:
    """Put a running tenant to sleep: route new server connections to the activator,
    let the pooler close the ones it has, stop the instance cleanly.

    Returns "slept", or why not: "busy" (in use, or being woken), "skipped".
    """
    route, iid = routes(), instance_id
    # A wake or a repair holds the lock for tens of milliseconds: wait for it.
    with instance_lock(iid, timeout=10) as locked:
        if not locked:
            return "busy"
        tenant = store().get(iid)
        if tenant is None or store().state(iid) != RUNNING:
            return "skipped"
        runtime, bouncer = runtime_for(tenant), pooler_for(tenant)
        if not wait_for(route.activator_socket(iid).exists, timeout=3):
            # The activator picks up new tenants within a scan interval; without
            # its socket a sleeping tenant could not be woken.
            log.warning("not putting %s to sleep: its activator socket is missing", iid)
            return "skipped"
        started = time.monotonic()
        route.point(iid, route.activator_dir(iid))
        try:
            pooler_reconnect(tenant)
            deadline = time.monotonic() + drain_timeout
            while True:
                pools = bouncer.pools()
                if pooler_in_use(pools, tenant):
                    raise Busy
                if _server_connections(pools, tenant) == 0:
                    break
                if time.monotonic() > deadline:
                    raise Busy
                time.sleep(0.02)
            runtime.stop(iid)
        except Busy:
            route.point(iid, runtime.socket_dir(iid))
            return "busy"
        except Exception:
            route.point(iid, runtime.socket_dir(iid))
            raise
        state_change(
            tenant, RUNNING, SLEEPING, action="sleep", actor=actor, duration_ms=_ms(started)
        )
    return "slept"


def instance_wake(
    instance_id: str, actor: str, ready: Callable[[Path], None] | None = None
) -> Path:
    """Start the tenant's instance if it is not running and route to it; the state
    becomes running. Returns the instance's socket directory. Idempotent. Decided
    here, from what the host holds: the control plane hears of it afterwards.

    `ready(socket_dir)` is called as soon as the instance accepts connections,
    before the wake is recorded (the lock keeps any sleep out until it is)."""
    route, iid = routes(), instance_id
    started = time.monotonic()
    with instance_lock(iid):
        tenant = store().get(iid)
        state = store().state(iid)
        if tenant is None or state not in (RUNNING, SLEEPING):
            raise RuntimeError(f"{iid} is {state or 'not on this host'}; it cannot be woken")
        runtime = runtime_for(tenant)
        note = ""
        if runtime.status(iid).state is not InstanceState.RUNNING:
            note = instance_start(tenant)
        # No RECONNECT here: it would also close the server connection PgBouncer
        # is logging in through the activator right now, and PgBouncer would
        # wait server_login_retry before trying again. The activator does it a
        # few seconds later (its hand-off), once those logins are done.
        route.point(iid, runtime.socket_dir(iid))
        if ready is not None:
            ready(runtime.socket_dir(iid))
        if state == SLEEPING:
            ms = _ms(started)
            state_change(
                tenant,
                SLEEPING,
                RUNNING,
                action="wake",
                actor=actor,
                duration_ms=ms,
                active=True,
                fields={"last_wake_ms": ms},
                increments={"wake_count": 1, "wake_ms_total": ms},
                reason=note,
            )
    return runtime.socket_dir(iid)


def instance_restart(instance_id: str, actor: str) -> str:
    """Stop and start a running tenant's instance (an operator's action).

    Sessions in progress are cut, as with any restart; connections arriving
    meanwhile wait in the activator (it wakes through the same lock) instead of
    finding no socket, which PgBouncer would only retry after server_login_retry.
    """
    route, iid = routes(), instance_id
    with instance_lock(iid):
        tenant = store().get(iid)
        if tenant is None or store().state(iid) != RUNNING:
            return "skipped"
        runtime = runtime_for(tenant)
        started = time.monotonic()
        if route.activator_socket(iid).exists():
            route.point(iid, route.activator_dir(iid))
        try:
            runtime.stop(iid)
            instance_start(tenant)
        finally:
            route.point(iid, runtime.socket_dir(iid))
        report.event(tenant.pk, "restart", actor, "restarted on request", _ms(started))
    return "restarted"


def instance_suspend(tenant: TenantSpec, actor: str) -> str:
    """Refuse the tenant's connections and stop its instance; its data stays. The
    control plane has it suspended already.

    The pooler forgets the database (new clients are told it does not exist),
    clients still connected lose their server as it stops, and no process is left
    (no KILL: pgbouncer#1401)."""
    with instance_lock(tenant):
        store().put(tenant, state=SUSPENDED)
        started = time.monotonic()
        pooler_sync(tenant)
        runtime_for(tenant).stop(tenant.instance_id)
        report.event(tenant.pk, "stopped", actor, "instance stopped, data kept", _ms(started))
    return "suspended"


def instance_unsuspend(tenant: TenantSpec, actor: str) -> str:
    """Start a suspended tenant again and give it back its pooler entry."""
    route, iid = routes(), tenant.instance_id
    with instance_lock(tenant):
        if store().state(iid) not in (SUSPENDED, None):
            return "skipped"
        store().put(tenant, state=SUSPENDED)
        runtime = runtime_for(tenant)
        started = time.monotonic()
        note = instance_start(tenant)
        route.point(iid, runtime.socket_dir(iid))
        # Its pooler entries first: the control plane says `running` once this
        # report arrives, and a client may connect at once.
        store().put(tenant, state=RUNNING)
        pooler_sync(tenant)
        state_change(
            tenant,
            SUSPENDED,
            RUNNING,
            action="unsuspend",
            actor=actor,
            duration_ms=_ms(started),
            idle_from_now=True,
            reason=note,
        )
    return "running"


def storage_limit_apply(tenant: TenantSpec, *, read_only: bool) -> None:
    """Refuse writes to a tenant over its plan's storage limit, or allow them again.

    The instance's configuration says so (dbaas.storage_full, read by the
    platform's module in the server, which the owner cannot change); a running
    instance rereads it at once, sessions already open included, a sleeping one
    when it starts.
    """
    with instance_lock(tenant, timeout=10) as locked:
        if not locked:  # a long backup of it, say: the next usage cycle tries again
            return
        tenant = tenant.but(storage_read_only=read_only)
        runtime = runtime_for(tenant)
        if runtime.status(tenant.instance_id).state is not InstanceState.MISSING:
            runtime.configure(instance_spec(tenant))
        store().put(tenant, decided_here=True)
    report.measured(tenant.pk, {"storage_read_only": read_only})
    limit = f"{tenant.plan.storage_limit_mb} MB"
    report.event(
        tenant.pk,
        "storage_limit",
        "usage",
        f"over the {limit} storage limit: writes are refused"
        if read_only
        else f"within the {limit} storage limit: writable again",
        0,
    )


def instance_repair(tenant: TenantSpec, actor: str = "reconcile") -> str | None:
    """Bring one tenant's instance and route in line with its state here (reconcile).

    Returns what it did, or None. Skips tenants someone is sleeping or waking now.
    """
    runtime, route = runtime_for(tenant), routes()
    iid = tenant.instance_id
    with instance_lock(tenant, timeout=0) as locked:
        if not locked:
            return None
        state = store().state(iid)
        status = runtime.status(iid).state
        if state == RUNNING:
            if status is InstanceState.MISSING:
                state_change(
                    tenant,
                    RUNNING,
                    "failed",
                    action="state",
                    actor="reconcile",
                    reason="the instance's data directory is missing",
                )
                return "failed"
            did = None
            if status is InstanceState.STOPPED:
                # Why, from its log, before the start adds to it.
                why = stop_reason(runtime.log_file(iid))
                started = time.monotonic()
                try:
                    note = instance_start(tenant)
                except Exception as exc:
                    report.note(tenant.pk, f"it stopped ({why}) and cannot start again: {exc}")
                    raise
                report.event(
                    tenant.pk, "restart", actor, f"it had stopped ({why}); restarted", _ms(started)
                )
                when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
                report.note(tenant.pk, note or f"restarted at {when} after: {why}")
                did = "restarted"
            if route.point(iid, runtime.socket_dir(iid)):
                did = did or "rerouted"
            if _reserve_kept(tenant, runtime, actor):
                did = did or "reserve_remade"
            return did
        if state == SLEEPING:
            if status is InstanceState.RUNNING:
                # A wake (or an aborted sleep) got as far as starting it: finish.
                route.point(iid, runtime.socket_dir(iid))
                state_change(
                    tenant, SLEEPING, RUNNING, action="wake", actor="reconcile", active=True
                )
                return "woken"
            # Its start on a full disk takes a share of its filesystem's reserve.
            if status is InstanceState.STOPPED and _reserve_kept(tenant, runtime, actor):
                return "reserve_remade"
            if status is InstanceState.STOPPED and route.point(iid, route.activator_dir(iid)):
                return "rerouted"
        if state == SUSPENDED and status is InstanceState.RUNNING:
            # A suspend killed between its state change and the stop.
            runtime.stop(iid)
            return "stopped"
    return None


def _reserve_kept(tenant: TenantSpec, runtime: Runtime, actor: str) -> bool:
    """Set the reserve of the instance's filesystem aside again if there is room
    (it may have been given up on a full disk); True if that ends the tenant's full
    disk: its note goes."""
    if not runtime.keep_reserve(tenant.instance_id, settings.DBAAS_DISK_RESERVE_MB << 20):
        return False
    report.note(tenant.pk, "")
    report.event(tenant.pk, "disk_ok", actor, "there is room on the disk again", 0)
    return True


DISK_FULL_NOTE = "the disk is full"
# How a server's log says it (a write that failed; a file it could not extend).
DISK_FULL_WORDS = ("No space left on device", "Check free disk space")


def disk_full_note(freed: int, detail: str) -> str:
    """The state reason of a tenant whose disk is full and which got its reserve."""
    return (
        f"{DISK_FULL_NOTE} ({detail}); {freed >> 20} MB were set free so that you can "
        "connect and DELETE, TRUNCATE or DROP data"
    )


# How much of a server's log is read at most: its end, where the news is.
_LOG_TAIL_BYTES = 64 << 10


def _log_lines(log_file: Path) -> list[str]:
    """The lines of the log's last _LOG_TAIL_BYTES."""
    with log_file.open("rb") as file:
        file.seek(max(0, os.fstat(file.fileno()).st_size - _LOG_TAIL_BYTES))
        return file.read().decode(errors="replace").splitlines()


def stop_reason(log_file: Path) -> str:
    """Why the server whose log this is stopped, in a few words and its own line:
    the first of these found in what it said since its last start."""
    try:
        lines = _log_lines(log_file)
    except FileNotFoundError:
        return "no log"
    # Only what this run of the server said: from its last start on.
    starts = [n for n, line in enumerate(lines) if "starting PostgreSQL" in line]
    lines = lines[starts[-1] :] if starts else lines
    for needle, what in (
        *((words, "disk full") for words in DISK_FULL_WORDS),
        ("out of memory", "out of memory"),
        ("PANIC:", "crashed"),
        ("was terminated by signal", "a server process was killed"),
    ):
        found = [line for line in lines if needle in line]
        if found:
            return f"{what}: {found[-1].split(' ', 3)[-1][:300]}"
    return "it exited without saying why (killed?)"


def wait_for(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
