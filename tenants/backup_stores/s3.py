"""Any S3-compatible object store, through boto3. Uploads are multipart and streamed;
an object exists only once its upload completed (a failed one is aborted)."""

import io
from collections.abc import Iterable, Iterator
from datetime import datetime

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from tenants.backup_stores.base import BackupStore, StoreError


class S3Store(BackupStore):
    kind = "s3"

    def __init__(
        self, endpoint: str, bucket: str, access_key: str, secret_key: str, region: str
    ) -> None:
        self.bucket = bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint or None,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
        )

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        reader = _ChunkReader(chunks)
        try:
            self.client.upload_fileobj(reader, self.bucket, key)
        except (BotoCoreError, ClientError) as exc:
            raise StoreError(f"upload of {key} to s3://{self.bucket} failed: {exc}") from exc
        return reader.total

    def get(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except (BotoCoreError, ClientError) as exc:
            raise StoreError(f"s3://{self.bucket}/{key} cannot be read: {exc}") from exc
        yield from body.iter_chunks(chunk_size)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise StoreError(f"s3://{self.bucket}/{key} cannot be deleted: {exc}") from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError:
            return False
        return True

    def discard_partial(self, key: str) -> None:
        try:
            listing = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
            for upload in listing.get("Uploads", []):
                if upload["Key"] == key:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload["UploadId"]
                    )
        except (BotoCoreError, ClientError) as exc:
            raise StoreError(
                f"cannot abort the uploads of s3://{self.bucket}/{key}: {exc}"
            ) from exc

    def discard_partials(self, started_before: datetime) -> int:
        """Abort multipart uploads that were never completed nor aborted."""
        removed = 0
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket)
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < started_before:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        removed += 1
        except (BotoCoreError, ClientError) as exc:
            raise StoreError(f"cannot list uploads of s3://{self.bucket}: {exc}") from exc
        return removed


class _ChunkReader(io.RawIOBase):
    """A file-like view of a stream of chunks, so boto3 can upload it in parts."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        self.total += size
        return size
