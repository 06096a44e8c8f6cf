"""Backup stores, one module each, behind the interface in `base`."""

from pathlib import Path

from tenants.backup_stores.base import BackupStore
from tenants.backup_stores.local import LocalStore


def get_store(kind: str, data_dir: Path) -> BackupStore:
    if kind == LocalStore.kind:
        return LocalStore(data_dir / "backups")
    raise ValueError(f"unknown backup store {kind!r}")
