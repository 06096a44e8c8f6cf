"""The backup store interface: named objects written whole or not at all."""

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from datetime import datetime


class StoreError(Exception):
    pass


class BackupStore(ABC):
    kind: str

    @abstractmethod
    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        """Store the stream under `key`; it becomes visible only once complete.
        Returns the number of bytes stored."""

    @abstractmethod
    def get(self, key: str) -> Iterator[bytes]: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def discard_partial(self, key: str) -> None:
        """Remove what an upload to `key` that was cut short left behind, if any."""

    @abstractmethod
    def discard_partials(self, started_before: datetime) -> int:
        """Remove what uploads cut short (a killed worker) left behind, if they started
        before `started_before`; never listed as objects, but they take space.
        Returns how many were removed."""
