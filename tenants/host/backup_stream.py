"""A backup's bytes: the instance's tar stream compressed with zstd on its way to the
store and hashed as stored; on the way back, decompressed and refused whole if its
hash differs (the consumer unpacks beside the current data and discards it all)."""

import hashlib
from collections.abc import Iterable, Iterator

import zstandard


class ChecksumMismatch(Exception):
    pass


class Counter:
    """Counts the raw bytes of a stream and hashes the stored ones as they pass."""

    def __init__(self) -> None:
        self.raw = 0
        self.sha256 = hashlib.sha256()

    def count(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.raw += len(chunk)
            yield chunk

    def hash_stored(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.sha256.update(chunk)
            yield chunk


def compress(chunks: Iterable[bytes]) -> Iterator[bytes]:
    chunker = zstandard.ZstdCompressor(level=3).chunker(chunk_size=1 << 20)
    for chunk in chunks:
        yield from chunker.compress(chunk)
    yield from chunker.finish()


def decompress_verified(chunks: Iterable[bytes], expected_sha256: str) -> Iterator[bytes]:
    """Decompress; at the end, refuse the whole stream if its hash differs.

    The consumer unpacks beside the current data and discards everything on this
    error, so a corrupted or truncated backup is never restored.
    """
    digest = hashlib.sha256()
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    try:
        for chunk in chunks:
            digest.update(chunk)
            yield decompressor.decompress(chunk)
    except zstandard.ZstdError as exc:
        raise ChecksumMismatch(f"the backup is corrupted (zstd: {exc})") from exc
    if digest.hexdigest() != expected_sha256:
        raise ChecksumMismatch(
            f"the backup's sha256 is {digest.hexdigest()}, expected {expected_sha256}: "
            "it is corrupted or truncated and will not be restored"
        )
    if not decompressor.eof:
        raise ChecksumMismatch("the backup is truncated")
