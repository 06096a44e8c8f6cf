"""Databases: create, inspect, sleep, wake, reset the password, delete."""

from django.http import HttpRequest
from django.views.decorators.cache import never_cache
from ninja import Router, Status
from ninja.decorators import decorate_view

from tenants import backups, selectors, services
from tenants.api.answers import BAD_JSON, created_database, operation
from tenants.api.auth import account_of, actor
from tenants.api.schemas import (
    OPTIONAL,
    CreateFailed,
    Database,
    DatabaseList,
    DatabaseWithCredentials,
    Error,
    NewDatabase,
    Nothing,
    TenantId,
)
from tenants.errors import Conflict, Unavailable
from tenants.models import Backup, Tenant

router = Router(tags=["databases"])

DATABASE = "api/v1/databases/{tenant_id}"
NO_DATABASE = (Error, "No such database")


@router.get(
    "api/v1/databases",
    **operation(
        "listDatabases", "List the account's databases", {200: (DatabaseList, "Oldest first")}
    ),
)
@decorate_view(never_cache)
def list_databases(request: HttpRequest):
    tenants = selectors.tenant_list(account=account_of(request))
    return DatabaseList(databases=[Database.of(t) for t in tenants])


@router.post(
    "api/v1/databases",
    **operation(
        "createDatabase",
        "Create a database",
        created_database("Created"),
        description="Waits for the host to start the instance (well under a second normally).",
    ),
)
@decorate_view(never_cache)  # the answer holds the password
def create_database(request: HttpRequest, payload: NewDatabase):
    return create_and_wait(request, payload.name)


def create_and_wait(request: HttpRequest, name: str, restored_from: Backup | None = None):
    """The answer of everything that makes a database: it waits for the host agent
    (tens of milliseconds normally), since the connection string must work the
    moment the client reads it."""
    tenant, password = services.tenant_create_ready(
        account=account_of(request), name=name, actor=actor(request), restored_from=restored_from
    )
    if tenant.state == Tenant.State.FAILED:
        failed = CreateFailed(
            error=f"the database could not be created: {tenant.state_reason}",
            database=Database.of(tenant),
        )
        return Status(500, failed)
    # Still provisioning after the wait: accepted; the string works once running.
    status = 201 if tenant.state == Tenant.State.RUNNING else 202
    return Status(status, DatabaseWithCredentials.of_new(tenant, password))


@router.get(
    DATABASE,
    **operation(
        "getDatabase", "Get a database", {200: (Database, "The database"), 404: NO_DATABASE}
    ),
)
def get_database(request: HttpRequest, tenant_id: TenantId):
    return Database.of(selectors.tenant_get(account=account_of(request), tenant_id=tenant_id))


@router.delete(
    DATABASE,
    **operation(
        "deleteDatabase",
        "Delete a database",
        {
            202: (Database, "Being deleted"),
            400: (Error, "`purge` is not true or false"),
            404: NO_DATABASE,
            409: (Error, "It is still being created, or its state forbids it"),
        },
        description="The instance, its data and its pooler entry are removed; its newest "
        "backup is kept unless `purge` is true.",
    ),
)
def delete_database(request: HttpRequest, tenant_id: TenantId, purge: bool = False):
    """`purge`: delete its backups too."""
    tenant = selectors.tenant_get(account=account_of(request), tenant_id=tenant_id)
    services.tenant_delete(tenant=tenant, actor=actor(request))
    backups.backups_on_delete(tenant=tenant, purge=purge)
    tenant.refresh_from_db()
    return Status(202, Database.of(tenant))


@router.post(
    DATABASE + "/password",
    **operation(
        "resetPassword",
        "Reset the owner's password",
        {
            200: (
                DatabaseWithCredentials,
                "The new password and strings; the old password no longer works",
            ),
            400: (Error, BAD_JSON),
            404: NO_DATABASE,
            409: (Error, "It is not running"),
            503: (Error, "The host has not applied the new password yet"),
        },
    ),
)
@decorate_view(never_cache)  # the answer holds the password
def reset_password(request: HttpRequest, tenant_id: TenantId, payload: Nothing = OPTIONAL):
    tenant = selectors.tenant_get(account=account_of(request), tenant_id=tenant_id)
    tenant, password = services.tenant_reset_password_applied(tenant=tenant, actor=actor(request))
    return DatabaseWithCredentials.of_new(tenant, password)


@router.post(
    DATABASE + "/sleep",
    **operation(
        "sleepDatabase",
        "Put a database to sleep",
        {
            200: (Database, "Asleep (its next client wakes it)"),
            400: (Error, BAD_JSON),
            404: NO_DATABASE,
            409: (Error, "It is not running, or a client is connected (it stays awake)"),
        },
    ),
)
def sleep_database(request: HttpRequest, tenant_id: TenantId, payload: Nothing = OPTIONAL):
    tenant = selectors.tenant_get(account=account_of(request), tenant_id=tenant_id)
    tenant = services.tenant_sleep_settled(tenant=tenant, actor=actor(request))
    if tenant.state == Tenant.State.RUNNING:
        raise Conflict(
            "the database is in use (a client is connected, or it is waking); it stays awake"
        )
    return Database.of(tenant)


@router.post(
    DATABASE + "/wake",
    **operation(
        "wakeDatabase",
        "Wake a database",
        {
            200: (Database, "Running"),
            400: (Error, BAD_JSON),
            404: NO_DATABASE,
            409: (Error, "It is neither running nor sleeping"),
            503: (Error, "It did not wake in time"),
        },
    ),
)
def wake_database(request: HttpRequest, tenant_id: TenantId, payload: Nothing = OPTIONAL):
    tenant = selectors.tenant_get(account=account_of(request), tenant_id=tenant_id)
    tenant = services.tenant_wake_settled(tenant=tenant, actor=actor(request))
    if tenant.state != Tenant.State.RUNNING:
        raise Unavailable("the database did not wake up in time; try again")
    return Database.of(tenant)
