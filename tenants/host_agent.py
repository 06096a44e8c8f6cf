"""What the host agent (the Celery worker of a host's queue) does to this machine for
a tenant: its instance through the runtime, its entry in the host's PgBouncer.

Turns tenant rows into plain values for `unikernel_images` and `poolers`.
"""

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import transaction

from dbaas.env import data_dir, service_user
from poolers.pgbouncer import DatabaseEntry, PgBouncer, UserEntry
from tenants.models import Host, Tenant
from unikernel_images import postgres_admin
from unikernel_images.image import load_image
from unikernel_images.paths import images_dir, instances_dir
from unikernel_images.runtimes import get_runtime
from unikernel_images.runtimes.base import InstanceSpec, Runtime

log = logging.getLogger(__name__)
State = Tenant.State

# States whose tenants have an entry in the pooler. A provisioning tenant is in
# it before it is running, so that a concurrent sync (reconcile) never drops the
# entry of a tenant whose connection string is about to be handed out; nobody
# has its credentials until then, so the early entry is harmless.
ROUTED_STATES = (State.PROVISIONING, State.RUNNING)


def local_host() -> Host:
    return Host.objects.get(name=settings.DBAAS_HOST_NAME)


def pooler() -> PgBouncer:
    return PgBouncer(
        root=data_dir() / "pgbouncer",
        listen_addr=settings.DBAAS_PGBOUNCER_LISTEN,
        listen_port=settings.DBAAS_PGBOUNCER_PORT,
        service_user=service_user(),
    )


def runtime_for(tenant: Tenant) -> Runtime:
    return get_runtime(tenant.runtime, instances_dir())


def instance_spec(tenant: Tenant) -> InstanceSpec:
    root = os.geteuid() == 0
    return InstanceSpec(
        instance_id=tenant.instance_id,
        image=load_image(images_dir(), tenant.image),
        uid=settings.DBAAS_TENANT_UID_BASE + tenant.pk if root else None,
        socket_group=service_user() if root else None,
        # A few slots above the plan's limit for the platform's own sessions.
        max_connections=tenant.plan.connection_limit + 5,
        logins=((tenant.database_name, tenant.role_name),),
    )


def instance_provision(tenant: Tenant) -> None:
    """Copy the template, start, create the owner role, add to the pooler."""
    runtime = runtime_for(tenant)
    spec = instance_spec(tenant)
    # A retried task finds the leftovers of its first attempt: nothing in them
    # is worth keeping, since the tenant never served a query.
    runtime.destroy(spec.instance_id)
    runtime.create(spec)
    runtime.start(spec)
    postgres_admin.bootstrap_owner(
        runtime.socket_dir(spec.instance_id),
        role=tenant.role_name,
        database=tenant.database_name,
        secret=tenant.scram_secret,
        connection_limit=tenant.plan.connection_limit,
    )
    pooler_sync(tenant.host)


def spares_refill(runtime_kind: str) -> int:
    """Keep DBAAS_SPARE_INSTANCES template copies ready so provisioning skips the copy."""
    runtime = get_runtime(runtime_kind, instances_dir())
    return runtime.prepare_spares(
        load_image(images_dir(), settings.DBAAS_IMAGE), settings.DBAAS_SPARE_INSTANCES
    )


def instance_destroy(tenant: Tenant) -> None:
    """Remove the tenant from the pooler first, then its instance and data.

    The caller has moved the tenant out of the routed states already.
    """
    pooler_sync(tenant.host)
    runtime_for(tenant).destroy(tenant.instance_id)


def instance_start(tenant: Tenant) -> None:
    runtime = runtime_for(tenant)
    spec = instance_spec(tenant)
    runtime.configure(spec)
    runtime.start(spec)


def instance_apply_secret(tenant: Tenant, secret: str) -> None:
    runtime = runtime_for(tenant)
    postgres_admin.set_role_secret(
        runtime.socket_dir(tenant.instance_id), role=tenant.role_name, secret=secret
    )


@contextmanager
def routing_change(host: Host) -> Iterator[None]:
    """Change the control plane and the pooler's files as one step.

    Inside: a DB transaction under the host's pooler lock. On the way out the files
    are rendered from the (uncommitted) rows, PgBouncer reloads, then the
    transaction commits, and only then is the lock released: whoever renders next
    reads the committed rows, so no concurrent sync can resurrect an old entry.
    """
    bouncer = pooler()
    with bouncer.config_lock(), transaction.atomic():
        yield
        _render_and_reload(bouncer, host)


def pooler_sync(host: Host) -> bool:
    """Render the pooler's files from the control plane; RELOAD if they changed."""
    bouncer = pooler()
    with bouncer.config_lock():
        return _render_and_reload(bouncer, host)


def _render_and_reload(bouncer: PgBouncer, host: Host) -> bool:
    routed = list(Tenant.objects.filter(host=host, state__in=ROUTED_STATES).select_related("plan"))
    changed = bouncer.write_config(
        databases=[_database_entry(t) for t in routed],
        users=[UserEntry(t.role_name, t.scram_secret) for t in routed],
    )
    if changed:
        bouncer.reload()
    return changed


def _database_entry(tenant: Tenant) -> DatabaseEntry:
    return DatabaseEntry(
        name=tenant.database_name,
        socket_dir=runtime_for(tenant).socket_dir(tenant.instance_id),
        pool_size=tenant.plan.pool_size,
        max_connections=tenant.plan.connection_limit,
    )
