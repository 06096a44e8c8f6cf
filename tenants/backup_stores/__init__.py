"""Backup stores, one module each, behind the interface in `base`."""

from pathlib import Path

from django.conf import settings

from tenants.backup_stores.base import BackupStore
from tenants.backup_stores.local import LocalStore


def get_store(kind: str, data_dir: Path) -> BackupStore:
    if kind == LocalStore.kind:
        return LocalStore(data_dir / "backups")
    if kind == "s3":
        from tenants.backup_stores.s3 import S3Store

        return S3Store(
            endpoint=settings.DBAAS_S3_ENDPOINT,
            bucket=settings.DBAAS_S3_BUCKET,
            access_key=settings.DBAAS_S3_ACCESS_KEY,
            secret_key=settings.DBAAS_S3_SECRET_KEY,
            region=settings.DBAAS_S3_REGION,
        )
    raise ValueError(f"unknown backup store {kind!r}")
