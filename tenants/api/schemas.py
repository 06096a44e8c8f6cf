"""What the API reads and writes, each object declared once: the views build their
answers with these, django-ninja validates requests and answers against them, and
the OpenAPI document (GET /api/v1/openapi.json) is generated from them.

Answers carry every field, always. Request objects ignore fields they do not know.
Where the services check a value (a name's pattern, a password's strength), the
schema only documents it, so that the message the caller gets is the service's.
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from ninja import Body, Path, Schema
from pydantic import ConfigDict, Field

from tenants import models, selectors
from tenants.services import NAME_RE


def one_of(values: list[Any], description: str = "", **field: Any) -> Any:
    """A string field whose values the model's choices list (documented, not checked:
    the values come from the database)."""
    if description:
        field["description"] = description
    return Field(json_schema_extra={"enum": values}, **field)


def documented(description: str, **schema: Any) -> Any:
    """A field with a constraint the services check and explain themselves."""
    return Field(description=description, json_schema_extra=schema)


# -- answers -------------------------------------------------------------------------


class Error(Schema):
    error: str = Field(description="What went wrong")


# "deleted" is never listed nor found; only the answer to DELETE can show it, if the
# host finished the deletion first.
DATABASE_STATES: list[Any] = list(models.Tenant.State.values)


class Database(Schema):
    """A database (never with its password)."""

    id: int = Field(description="Identifier used in the API's paths")
    name: str = Field(description="The name given at creation")
    state: str = one_of(DATABASE_STATES)
    state_reason: str = Field(description="Why it is in this state (empty if nothing to say)")
    host: str = Field(description="Host name to connect to")
    port: int = Field(description="Port of the host's PgBouncer (TLS)")
    database: str = Field(description="Server-side database name: `<name>_<8 random characters>`")
    user: str = Field(description="Owner role, the same as `database`")
    plan: str = Field(description="Name of the plan")
    postgres_version: str = Field(description="PostgreSQL major version of its server, e.g. `17`")
    created_at: datetime
    last_active_at: datetime | None = Field(description="Last time a client used it; null if never")
    wake_count: int = Field(description="Times it was woken from sleep", ge=0)
    size_bytes: int | None = Field(
        description="Disk used by its data, as its host last measured it", ge=0
    )
    read_only: bool = Field(
        description="Over the plan's storage limit: writes are refused until data is deleted "
        "(reads, DELETE, TRUNCATE and DROP work)"
    )
    available: bool = Field(
        description="False while its host does not answer (`state_reason` says since when); "
        "nothing is lost, it serves again when the host is back"
    )

    @classmethod
    def of(cls, tenant: models.Tenant) -> "Database":
        return cls(
            id=tenant.pk,
            name=tenant.name,
            state=tenant.state,
            state_reason=tenant.host.down_reason or tenant.state_reason,
            host=tenant.host.public_host,
            port=tenant.pooler_port,
            database=tenant.database_name,
            user=tenant.role_name,
            plan=tenant.plan.name,
            postgres_version=tenant.major,
            created_at=tenant.created_at,
            last_active_at=tenant.last_active_at,
            wake_count=tenant.wake_count,
            size_bytes=tenant.size_bytes,
            read_only=tenant.storage_read_only is True,
            available=tenant.host.down_since is None,
        )


class DatabaseWithCredentials(Database):
    """A database with its password and connection strings, shown once."""

    password: str = Field(description="The owner's password; shown only in this answer")
    connection_string: str = Field(
        description="Session pooling: fully compatible with every client. It says "
        "`sslmode=verify-full`: trust the platform's CA (`GET /api/v1/ca.pem`) first"
    )
    pooled_connection_string: str = Field(
        description="Transaction pooling (database `<database>_pooled`), for many short connections"
    )

    @classmethod
    def of_new(cls, tenant: models.Tenant, password: str) -> "DatabaseWithCredentials":
        fields = Database.of(tenant).model_dump()
        return cls(**fields, **selectors.credentials_json(tenant, password))


class CreateFailed(Schema):
    """The database could not be made: it is `failed`, with the reason; delete it."""

    error: str
    database: Database


class DatabaseList(Schema):
    databases: list[Database] = Field(description="Oldest first")


class Account(Schema):
    email: str = Field(description="Normalised to lower case")
    token: str = Field(description="An API token")


class Token(Schema):
    token: str = Field(description="A new API token")


class Revoked(Schema):
    revoked: Literal[True]


class Backup(Schema):
    """A backup or logical export."""

    id: int
    database_id: int
    kind: str | None = one_of(
        [*models.Backup.Kind.values, None],
        "`base` (online physical), `cold` (copy of a sleeping instance), `logical` "
        "(pg_dump export); null until a physical backup has started",
    )
    state: str = one_of(list(models.Backup.State.values))
    size_bytes: int | None = Field(description="Size before compression", ge=0)
    compressed_bytes: int | None = Field(description="Size in the store", ge=0)
    sha256: str | None = Field(description="Checksum of the stored object")
    store: str = Field(description="`local` or `s3`")
    error: str | None = Field(description="Why it failed")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    verified_at: datetime | None = Field(description="Last verification restore")
    verified_ok: bool | None = Field(description="Its verdict; null if never")

    @classmethod
    def fields_of(cls, backup: models.Backup) -> dict[str, Any]:
        return {
            "id": backup.pk,
            "database_id": backup.tenant_id,
            "kind": backup.kind or None,
            "state": backup.state,
            "size_bytes": backup.size_bytes,
            "compressed_bytes": backup.compressed_bytes,
            "sha256": backup.sha256 or None,
            "store": backup.store,
            "error": backup.error or None,
            "created_at": backup.created_at,
            "started_at": backup.started_at,
            "finished_at": backup.finished_at,
            "verified_at": backup.verified_at,
            "verified_ok": backup.verified_ok,
        }

    @classmethod
    def of(cls, backup: models.Backup) -> "Backup":
        return cls(**cls.fields_of(backup))


class BackupList(Schema):
    backups: list[Backup]


class AccountBackup(Backup):
    database_name: str = Field(description="Name of its database, maybe deleted")

    @classmethod
    def of(cls, backup: models.Backup) -> "AccountBackup":
        return cls(**cls.fields_of(backup), database_name=backup.tenant.name)


class AccountBackupList(Schema):
    backups: list[AccountBackup] = Field(description="Done backups, deleted databases' included")


class Restore(Schema):
    """An in-place restore."""

    id: int
    backup_id: int
    database_id: int
    state: str = one_of(list(models.Restore.State.values))
    progress: str = Field(description="What it is doing now")
    error: str | None = Field(description="Why it failed; the database kept its data")
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, restore: models.Restore) -> "Restore":
        return cls(
            id=restore.pk,
            backup_id=restore.backup_id,
            database_id=restore.tenant_id,
            state=restore.state,
            progress=restore.progress,
            error=restore.error or None,
            created_at=restore.created_at,
            finished_at=restore.finished_at,
        )


class HealthChecks(Schema):
    controlplane: str = Field(description="`ok`, or `error: ...`")
    redis: str = Field(description="`ok`, or `error: ...`")


class Health(Schema):
    status: Literal["ok", "unhealthy"]
    checks: HealthChecks


# -- requests ------------------------------------------------------------------------

NAME = documented(
    "1-40 lowercase letters, digits and underscores, starting with a letter; unique among "
    "the account's databases",
    pattern=NAME_RE.pattern,
)


class NewAccount(Schema):
    email: str = documented("A valid address; it is the account's login", format="email")
    password: str = documented(
        "At least 10 characters, not all digits, not a common password", minLength=10
    )


class Credentials(Schema):
    # Missing ones are wrong credentials like any others (401), so they default to "".
    model_config = ConfigDict(json_schema_extra={"required": ["email", "password"]})

    email: str = ""
    password: str = ""


class NewDatabase(Schema):
    name: str = NAME


class NewBackup(Schema):
    kind: Literal["physical", "logical"] = Field(
        "physical",
        description="`physical` (default): the whole instance; `logical`: a `pg_dump -Fc` "
        "export to download",
    )


class RestoreRequest(Schema):
    target: Literal["same", "new"] = Field(
        "same", description="`same` (default): in place; `new`: into a new database"
    )
    name: str | None = Field(
        None,
        description="With `target: new`: the new database's name, as for `POST /databases` "
        "(default `<name>_restored`)",
        json_schema_extra={"pattern": NAME_RE.pattern},
    )


class RestoreIntoNew(Schema):
    name: str = NAME


class Nothing(Schema):
    """Nothing is read from it; if sent, it must be a JSON object."""


# Path parameters. Anything that is not an id names nothing: 404, like an unknown id
# (tenants/api/errors.py).
def object_id(what: str) -> Any:
    return Path(description=f"The {what}'s `id`; an unknown one, or another account's, answers 404")


TenantId = Annotated[int, object_id("database")]
BackupId = Annotated[int, object_id("backup")]
RestoreId = Annotated[int, object_id("restore")]

# An optional body: none at all, or a JSON object.
OPTIONAL: Any = Body(None)
