"""Databases a tenant makes on its own server (CREATE DATABASE), beyond the one the
platform made: what its server's registrar requests do (poolers/registrar.py).

A new name is reserved before CREATE DATABASE runs and routed (pooler entries for
the name and `<name>_pooled`, the owner's hba rule) before the client hears that
it ran; a dropped one stops being routed before DROP DATABASE runs, its pooler
connections closed so that the drop does not wait on them.
"""

import logging
import re

from django.db import IntegrityError, transaction

from tenants.host import agent
from tenants.models import Tenant, TenantDatabase

log = logging.getLogger(__name__)

# Routed names: the pooler's name rule (poolers/pgbouncer.py, at most 62 bytes).
# Names of up to 55 have a `_pooled` alias too (agent.pooled_alias).
NAME = re.compile(r"[a-z_][a-z0-9_-]{0,61}")
NAME_RULE = (
    "databases here are reached through the host's pooler, so their names are "
    "lowercase letters, digits, underscores and hyphens, at most 62 characters, "
    "starting with a letter or an underscore"
)
RESERVED = {"postgres", "template0", "template1", "pgbouncer"}


def decide(instance_id: str, verb: str, name: str) -> str | None:
    """Do what the instance's server asks; None when done, else why not."""
    tenant = Tenant.objects.select_related("plan", "host").get(
        pk=agent.tenant_pk_for_instance(instance_id)
    )
    if tenant.state not in agent.ROUTED_STATES:
        return f"this database is {tenant.state}"
    action = {
        "reserve": database_reserve,
        "created": database_created,
        "release": database_release,
        "dropping": database_dropping,
        "dropped": database_dropped,
    }[verb]
    return action(tenant=tenant, name=name)


def database_reserve(*, tenant: Tenant, name: str) -> str | None:
    if not NAME.fullmatch(name) or name.endswith("_pooled") or name in RESERVED:
        return f"cannot create database {name!r}: {NAME_RULE}"
    with transaction.atomic():
        Tenant.objects.select_for_update().get(pk=tenant.pk)  # one CREATE at a time
        mine = TenantDatabase.objects.filter(tenant=tenant)
        if mine.filter(name=name).exists():
            return None  # reserved already (a retried statement)
        limit = tenant.plan.databases_per_server
        if mine.count() + 1 >= limit:
            return (
                f"too many databases: the {tenant.plan.name} plan allows {limit} on a "
                "server, this one included; drop one to create another"
            )
        if _taken(name):
            return f"the database name {name!r} is taken on this host; choose another"
        try:
            TenantDatabase.objects.create(tenant=tenant, name=name)
        except IntegrityError:
            return f"the database name {name!r} is taken on this host; choose another"
    return None


def database_created(*, tenant: Tenant, name: str) -> str | None:
    with agent.routing_change(tenant.host):
        updated = TenantDatabase.objects.filter(tenant=tenant, name=name).update(
            state=TenantDatabase.State.ACTIVE
        )
        if not updated:
            # Given back after a failed DROP, or never reserved: route it if free.
            refusal = database_reserve(tenant=tenant, name=name)
            if refusal is not None:
                return refusal
            TenantDatabase.objects.filter(tenant=tenant, name=name).update(
                state=TenantDatabase.State.ACTIVE
            )
    return None


def database_release(*, tenant: Tenant, name: str) -> str | None:
    TenantDatabase.objects.filter(
        tenant=tenant, name=name, state=TenantDatabase.State.RESERVED
    ).delete()
    return None


def database_dropping(*, tenant: Tenant, name: str) -> str | None:
    if name == tenant.database_name:
        return (
            f"{name} is the database the platform made for you: it is deleted (with "
            "its server) through the API or the web page, and cannot be dropped or renamed"
        )
    database = TenantDatabase.objects.filter(tenant=tenant, name=name).first()
    if database is None:
        return None  # not routed: nothing to undo
    # Close the pooler's server connections to it, so that DROP DATABASE finds no
    # other session (a client still using it makes the DROP fail, as PostgreSQL
    # says), then forget its entries.
    aliases = [database.name, *filter(None, [agent.pooled_alias(database.name)])]
    agent.pooler().close_servers(aliases)
    with agent.routing_change(tenant.host):
        database.delete()
    return None


def database_dropped(*, tenant: Tenant, name: str) -> str | None:
    TenantDatabase.objects.filter(tenant=tenant, name=name).delete()
    return None


def _taken(name: str) -> bool:
    """Is `name` another database's name in the pooler? (Names ending in `_pooled`
    are refused before this: they are the aliases.)"""
    if TenantDatabase.objects.filter(name=name).exists():
        return True
    # The platform's own databases are `<name>_<slug>`.
    base, _, slug = name.rpartition("_")
    return Tenant.objects.filter(name=base, slug=slug).exclude(state=Tenant.State.DELETED).exists()
