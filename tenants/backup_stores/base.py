"""The backup store interface: named objects written whole or not at all."""

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator


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
