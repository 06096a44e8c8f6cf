"""Databases a tenant makes on its own server (CREATE DATABASE), beyond the one the
platform made: what its server's registrar requests do (poolers/registrar.py).

A new name is reserved before CREATE DATABASE runs and routed (pooler entries for
the name and `<name>_pooled`, the owner's hba rule) before the client hears that
it ran; a dropped one stops being routed before DROP DATABASE runs, its pooler
connections closed so that the drop does not wait on them. Decided from what this
host holds (the names are unique on the host, as the pooler's are); the control
plane hears of each database made or dropped afterwards.
"""

import logging
import re

from tenants.host import agent, report
from tenants.host.spec import TenantSpec

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
    held = agent.store()
    tenant, state = held.get(instance_id), held.state(instance_id)
    if tenant is None or state not in agent.ROUTED_STATES:
        return f"this database is {state or 'not on this host'}"
    action = {
        "reserve": database_reserve,
        "created": database_created,
        "release": database_release,
        "dropping": database_dropping,
        "dropped": database_dropped,
    }[verb]
    return action(tenant=tenant, name=name)


def database_reserve(*, tenant: TenantSpec, name: str) -> str | None:
    if not NAME.fullmatch(name) or name.endswith("_pooled") or name in RESERVED:
        return f"cannot create database {name!r}: {NAME_RULE}"
    if _platforms(name, tenant):
        return f"the database name {name!r} is taken on this host; choose another"
    refusal = agent.store().database_reserve(
        tenant.instance_id, name, tenant.plan.databases_per_server
    )
    if refusal == "limit":
        limit = tenant.plan.databases_per_server
        return (
            f"too many databases: the {tenant.plan.name} plan allows {limit} on a "
            "server, this one included; drop one to create another"
        )
    if refusal == "taken":
        return f"the database name {name!r} is taken on this host; choose another"
    return None


def database_created(*, tenant: TenantSpec, name: str) -> str | None:
    held = agent.store()
    if not held.database_activate(tenant.instance_id, name):
        # Given back after a failed DROP, or never reserved: route it if free.
        refusal = database_reserve(tenant=tenant, name=name)
        if refusal is not None:
            return refusal
        held.database_activate(tenant.instance_id, name)
    agent.pooler_sync(tenant)
    report.database(tenant.pk, name, made=True)
    return None


def database_release(*, tenant: TenantSpec, name: str) -> str | None:
    agent.store().database_forget(tenant.instance_id, name, only_reserved=True)
    return None


def database_dropping(*, tenant: TenantSpec, name: str) -> str | None:
    if name == tenant.database_name:
        return (
            f"{name} is the database the platform made for you: it is deleted (with "
            "its server) through the API or the web page, and cannot be dropped or renamed"
        )
    held = agent.store()
    if held.database_owner(name) != tenant.instance_id:
        return None  # not routed: nothing to undo
    # Close the pooler's server connections to it, so that DROP DATABASE finds no
    # other session (a client still using it makes the DROP fail, as PostgreSQL
    # says), then forget its entries.
    aliases = [name, *filter(None, [agent.pooled_alias(name)])]
    agent.pooler_for(tenant).close_servers(aliases)
    held.database_forget(tenant.instance_id, name)
    agent.pooler_sync(tenant)
    report.database(tenant.pk, name, made=False)
    return None


def database_dropped(*, tenant: TenantSpec, name: str) -> str | None:
    if agent.store().database_forget(tenant.instance_id, name):
        report.database(tenant.pk, name, made=False)
    return None


def _platforms(name: str, tenant: TenantSpec) -> bool:
    """Is `name` the database the platform made for a tenant of this host (its
    `<name>_<slug>`)?"""
    return any(spec.database_name == name for spec, _state in agent.store().all())
