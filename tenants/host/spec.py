"""What a host knows of a tenant: its spec, as the control plane sends it in task
arguments (a JSON object) and the host keeps it in its own store
(tenants/host/store.py). Nothing else of the control plane reaches a host.

The attribute names are the control plane's (`spec.role_name`,
`spec.plan.connection_limit`), so that code on the host reads the same whether it
was given a spec or, before it, a model row.
"""

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

# Tenant states, as the control plane names them (tenants.models.Tenant.State).
PROVISIONING = "provisioning"
RUNNING = "running"
SLEEPING = "sleeping"
DELETING = "deleting"
FAILED = "failed"
SUSPENDED = "suspended"
MOVING = "moving"

# What the image's catalog may name in the instance's config (a plain identifier).
EXTENSION_NAME = re.compile(r"[a-z_][a-z0-9_-]*")


# PostgreSQL settings a plan may set for its servers (Plan.postgres_settings), with
# the form each value must have: they go into the instance's config file as they
# are, quoted. Memory and processes of small servers (docs/density.md).
_MEMORY = re.compile(r"[0-9]{1,7}(kB|MB|GB)")
_INTEGER = re.compile(r"[0-9]{1,7}")
_DURATION = re.compile(r"[0-9]{1,7}(ms|s|min|h|d)?")
_SWITCH = re.compile(r"on|off")
POSTGRES_SETTINGS = {
    "shared_buffers": _MEMORY,
    "wal_buffers": _MEMORY,
    "max_wal_size": _MEMORY,
    "min_wal_size": _MEMORY,
    "max_locks_per_transaction": _INTEGER,
    "max_pred_locks_per_transaction": _INTEGER,
    "max_files_per_process": _INTEGER,
    "autovacuum": _SWITCH,
    "autovacuum_max_workers": _INTEGER,
    "autovacuum_naptime": _DURATION,
    "checkpoint_timeout": _DURATION,
    "jit": _SWITCH,
}


def postgres_setting_errors(values: dict[str, Any]) -> list[str]:
    """What is wrong with a plan's PostgreSQL settings (nothing: [])."""
    errors = []
    for name, value in values.items():
        form = POSTGRES_SETTINGS.get(name)
        if form is None:
            errors.append(f"{name}: not a setting a plan may set ({', '.join(POSTGRES_SETTINGS)})")
        elif not isinstance(value, str) or not form.fullmatch(value):
            errors.append(f"{name}: {value!r} is not a value of its kind ({form.pattern})")
    return errors


def postgres_config(values: dict[str, Any]) -> dict[str, str]:
    """A plan's settings as lines of the instance's config (name -> quoted value),
    the valid ones only."""
    return {
        name: f"'{value}'"
        for name, value in sorted(values.items())
        if not postgres_setting_errors({name: value})
    }


def instance_id_of(pk: int) -> str:
    """A tenant's instance: its directory, lock, route and registrar socket."""
    return f"t{pk}"


def database_name_of(name: str, slug: str) -> str:
    """The database and role name: unique per host, shown in connection strings."""
    return f"{name}_{slug}"


def major_of(image: str) -> str:
    """The PostgreSQL major an image runs, e.g. "17" for postgres-17."""
    return image.removeprefix("postgres-")


@dataclass(frozen=True)
class PlanSpec:
    name: str
    connection_limit: int
    pool_size: int
    storage_limit_mb: int
    sleeps_when_idle: bool
    idle_timeout_seconds: int
    memory_limit_mb: int
    cpu_limit: float
    process_limit: int
    temp_file_limit_mb: int
    work_mem_max_mb: int
    databases_per_server: int
    extension_list: tuple[str, ...] = ()
    postgres_settings: dict[str, str] = field(default_factory=dict)

    @property
    def storage_limit_bytes(self) -> int:
        return self.storage_limit_mb * 1024 * 1024


@dataclass(frozen=True)
class TenantSpec:
    pk: int
    name: str
    slug: str
    scram_secret: str
    runtime: str
    image: str
    plan: PlanSpec
    # The state the control plane gave it last (the host owns running vs sleeping).
    state: str
    storage_read_only: bool | None = None
    # The databases the owner made on its server (CREATE DATABASE), routed too.
    databases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def instance_id(self) -> str:
        return instance_id_of(self.pk)

    @property
    def database_name(self) -> str:
        return database_name_of(self.name, self.slug)

    @property
    def role_name(self) -> str:
        return self.database_name

    @property
    def major(self) -> str:
        return major_of(self.image)

    def as_json(self) -> dict[str, Any]:
        """For task arguments and the host's store."""
        data = dataclasses.asdict(self)
        data["plan"]["extension_list"] = list(self.plan.extension_list)
        data["databases"] = list(self.databases)
        return data

    @classmethod
    def of_json(cls, data: dict[str, Any]) -> "TenantSpec":
        # Fields this host's code does not know (a newer control plane's) are left
        # out, not an error.
        plan_fields = {f.name for f in dataclasses.fields(PlanSpec)}
        plan = {k: v for k, v in data["plan"].items() if k in plan_fields}
        plan["postgres_settings"] = dict(plan.get("postgres_settings") or {})
        plan["extension_list"] = tuple(
            name for name in plan.get("extension_list", ()) if EXTENSION_NAME.fullmatch(name)
        )
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k != "plan"}
        values["databases"] = tuple(values.get("databases", ()))
        return cls(plan=PlanSpec(**plan), **values)

    def but(self, **changes: Any) -> "TenantSpec":
        return dataclasses.replace(self, **changes)
