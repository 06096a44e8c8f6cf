"""Backups, restores and logical exports."""

from django.http import HttpRequest
from django.views.decorators.cache import never_cache
from ninja import Router, Status
from ninja.decorators import decorate_view

from tenants import backups, downloads, selectors
from tenants.api.answers import BAD_JSON, created_database, operation
from tenants.api.auth import account_of, actor
from tenants.api.databases import DATABASE, NO_DATABASE, create_and_wait
from tenants.api.schemas import (
    OPTIONAL,
    AccountBackup,
    AccountBackupList,
    Backup,
    BackupId,
    BackupList,
    DatabaseWithCredentials,
    Error,
    NewBackup,
    Restore,
    RestoreId,
    RestoreIntoNew,
    RestoreRequest,
    TenantId,
)
from tenants.errors import Conflict, InvalidInput, NotFound
from tenants.models import Backup as BackupRow
from tenants.models import Restore as RestoreRow
from tenants.models import Tenant

router = Router(tags=["backups"])

BACKUP = DATABASE + "/backups/{backup_id}"
NO_BACKUP = (Error, "No such database or backup")


def backup_of(tenant: Tenant, backup_id: int) -> BackupRow:
    try:
        return tenant.backups.get(pk=backup_id)
    except BackupRow.DoesNotExist:
        raise NotFound(f"backup {backup_id} not found") from None


@router.get(
    DATABASE + "/backups",
    **operation(
        "listBackups",
        "List a database's backups",
        {200: (BackupList, "Its backups"), 404: NO_DATABASE},
    ),
)
def list_backups(request: HttpRequest, tenant_id: TenantId):
    tenant = selectors.tenant_get(account=account_of(request), tenant_id=tenant_id)
    return BackupList(backups=[Backup.of(b) for b in tenant.backups.all()])


@router.post(
    DATABASE + "/backups",
    **operation(
        "createBackup",
        "Back up a database",
        {
            202: (Backup, "Queued; poll it"),
            400: (Error, f"{BAD_JSON}, or a bad `kind`"),
            404: NO_DATABASE,
            409: (Error, "It is neither running nor sleeping"),
            429: (Error, "The account has 3 backups not finished yet; try again later"),
        },
        description="A sleeping database is copied without waking it.",
    ),
)
def create_backup(request: HttpRequest, tenant_id: TenantId, payload: NewBackup = OPTIONAL):
    tenant = selectors.tenant_get(account=account_of(request), tenant_id=tenant_id)
    logical = payload is not None and payload.kind == "logical"
    backup = backups.backup_request(tenant=tenant, actor=actor(request), logical=logical)
    return Status(202, Backup.of(backup))


@router.get(
    BACKUP,
    **operation("getBackup", "Get a backup", {200: (Backup, "The backup"), 404: NO_BACKUP}),
)
def get_backup(request: HttpRequest, tenant_id: TenantId, backup_id: BackupId):
    tenant = selectors.tenant_get(account=account_of(request), tenant_id=tenant_id)
    return Backup.of(backup_of(tenant, backup_id))


@router.get(
    BACKUP + "/download",
    **operation(
        "downloadBackup",
        "Download a logical export",
        {
            200: {
                "description": "The `pg_dump -Fc` file, for `pg_restore`",
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
                "headers": {
                    "X-Checksum-SHA256": {
                        "description": "sha256 of the file",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    "Content-Disposition": {
                        "description": 'attachment; filename="<name>-<id>.dump"',
                        "required": True,
                        "schema": {"type": "string"},
                    },
                },
            },
            400: (Error, "It is a physical backup"),
            404: NO_BACKUP,
            409: (Error, "The export is not done"),
            503: (Error, "The host that keeps the export does not answer now"),
        },
    ),
)
def download_backup(request: HttpRequest, tenant_id: TenantId, backup_id: BackupId):
    tenant = selectors.tenant_get(account=account_of(request), tenant_id=tenant_id)
    backup = backup_of(tenant, backup_id)
    if backup.kind != BackupRow.Kind.LOGICAL:
        raise InvalidInput(
            'only logical exports can be downloaded; create one with {"kind": "logical"}'
        )
    if backup.state != BackupRow.State.DONE:
        raise Conflict(f"export {backup.pk} is {backup.state}")
    return downloads.export_response(tenant, backup)


@router.post(
    BACKUP + "/restore",
    **operation(
        "restoreBackup",
        "Restore a backup in place, or into a new database",
        {
            **created_database('With `"target": "new"`: created'),
            202: (
                Restore | DatabaseWithCredentials,
                'In place: queued; poll the restore. With `"target": "new"`: created, still '
                "provisioning.",
            ),
            400: (Error, f"{BAD_JSON}, a bad `target`, or a bad `name`"),
            404: NO_BACKUP,
            409: (
                Error,
                "The backup is not done, or is a logical export; the database cannot be "
                "restored into now, or another restore of it is not finished; or the new "
                "name is taken",
            ),
        },
        description="In place: the restored copy is checked before it replaces the data; on "
        "any error the database keeps its current data.",
    ),
)
@decorate_view(never_cache)  # a new database's answer holds its password
def restore_backup(
    request: HttpRequest,
    tenant_id: TenantId,
    backup_id: BackupId,
    payload: RestoreRequest = OPTIONAL,
):
    tenant = selectors.tenant_get(account=account_of(request), tenant_id=tenant_id)
    backup = backup_of(tenant, backup_id)
    payload = payload or RestoreRequest.model_validate({})
    if payload.target == "new":
        # A new database of the same account (the plan's quota applies), made from
        # the backup: the answer is that of POST /databases.
        name = payload.name or f"{tenant.name}_restored"[:40]
        return create_and_wait(request, name, restored_from=backup)
    restore = backups.restore_request(backup=backup, actor=actor(request))
    return Status(202, Restore.of(restore))


@router.get(
    DATABASE + "/restores/{restore_id}",
    **operation(
        "getRestore",
        "Get an in-place restore",
        {200: (Restore, "The restore"), 404: (Error, "No such database or restore")},
    ),
)
def get_restore(request: HttpRequest, tenant_id: TenantId, restore_id: RestoreId):
    tenant = selectors.tenant_get(account=account_of(request), tenant_id=tenant_id)
    try:
        return Restore.of(tenant.restores.get(pk=restore_id))
    except RestoreRow.DoesNotExist:
        raise NotFound(f"restore {restore_id} not found") from None


@router.get(
    "api/v1/backups",
    **operation(
        "listAccountBackups",
        "List every usable backup of the account",
        {200: (AccountBackupList, "Done backups, deleted databases' included")},
    ),
)
def list_account_backups(request: HttpRequest):
    found = BackupRow.objects.filter(
        tenant__account=account_of(request), state=BackupRow.State.DONE
    ).select_related("tenant")
    return AccountBackupList(backups=[AccountBackup.of(b) for b in found])


@router.post(
    "api/v1/backups/{backup_id}/restore",
    **operation(
        "restoreBackupIntoNew",
        "Restore any of the account's backups into a new database",
        {
            **created_database("Created from the backup"),
            404: (Error, "No such backup"),
            409: (Error, "The backup is not done, or is a logical export; or the name is taken"),
        },
        description="Works for a deleted database's kept backup too.",
    ),
)
@decorate_view(never_cache)  # the answer holds the password
def restore_backup_into_new(request: HttpRequest, backup_id: BackupId, payload: RestoreIntoNew):
    try:
        backup = BackupRow.objects.select_related("tenant").get(
            pk=backup_id, tenant__account=account_of(request)
        )
    except BackupRow.DoesNotExist:
        raise NotFound(f"backup {backup_id} not found") from None
    return create_and_wait(request, payload.name, restored_from=backup)
