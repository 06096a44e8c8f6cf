"""A local directory (default: <data dir>/backups). Objects are written under a
temporary name and renamed once complete and synced."""

import os
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

from tenants.backup_stores.base import BackupStore, StoreError


class LocalStore(BackupStore):
    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise StoreError(f"bad key {key!r}")
        return path

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_name(f".partial-{path.name}")
        written = 0
        try:
            with open(partial, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    written += len(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(partial, 0o600)
            partial.rename(path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return written

    def get(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            with open(self._path(key), "rb") as f:
                while chunk := f.read(chunk_size):
                    yield chunk
        except FileNotFoundError:
            raise StoreError(f"backup object {key!r} is missing from the local store") from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def size(self, key: str) -> int:
        """Bytes of a complete object; StoreError if there is none (or a bad key)."""
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise StoreError(f"backup object {key!r} is missing from the local store") from None

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def discard_partial(self, key: str) -> None:
        path = self._path(key)
        path.with_name(f".partial-{path.name}").unlink(missing_ok=True)

    def discard_partials(self, started_before: datetime) -> int:
        removed = 0
        for partial in self.root.glob("**/.partial-*"):
            try:
                if partial.stat().st_mtime < started_before.timestamp():
                    partial.unlink()
                    removed += 1
            except FileNotFoundError:  # finished or removed meanwhile
                continue
        return removed
