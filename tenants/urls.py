from django.urls import path

from tenants import api

urlpatterns = [
    path("api/v1/accounts", api.accounts, name="api-accounts"),
    path("api/v1/tokens", api.tokens, name="api-tokens"),
    path("api/v1/tokens/current", api.token_current, name="api-token-current"),
    path("api/v1/databases", api.databases, name="api-databases"),
    path("api/v1/databases/<str:tenant_id>", api.database, name="api-database"),
    path(
        "api/v1/databases/<str:tenant_id>/password",
        api.database_password,
        name="api-database-password",
    ),
    path("api/v1/databases/<str:tenant_id>/sleep", api.database_sleep, name="api-database-sleep"),
    path("api/v1/databases/<str:tenant_id>/wake", api.database_wake, name="api-database-wake"),
    path(
        "api/v1/databases/<str:tenant_id>/backups",
        api.database_backups,
        name="api-database-backups",
    ),
    path(
        "api/v1/databases/<str:tenant_id>/backups/<str:backup_id>",
        api.database_backup,
        name="api-database-backup",
    ),
    path(
        "api/v1/databases/<str:tenant_id>/backups/<str:backup_id>/restore",
        api.database_backup_restore,
        name="api-database-backup-restore",
    ),
    path(
        "api/v1/databases/<str:tenant_id>/restores/<str:restore_id>",
        api.database_restore,
        name="api-database-restore",
    ),
    path(
        "api/v1/databases/<str:tenant_id>/backups/<str:backup_id>/download",
        api.database_backup_download,
        name="api-database-backup-download",
    ),
    path("api/v1/backups", api.account_backups, name="api-backups"),
    path(
        "api/v1/backups/<str:backup_id>/restore",
        api.account_backup_restore,
        name="api-backup-restore",
    ),
    path("api/v1/ca.pem", api.ca_certificate, name="api-ca"),
    path("api/v1/openapi.json", api.openapi_json, name="api-openapi"),
    path("api/docs", api.api_docs, name="api-docs"),
]
