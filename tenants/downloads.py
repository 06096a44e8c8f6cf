"""A logical export as an HTTP download, for the API and the web page alike: streamed
as it is read (never held in memory), from the S3 store, or from the host that keeps
it in its own store (tenants/host/exports.py), wherever that host is."""

import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator

from django.conf import settings
from django.http import StreamingHttpResponse

from dbaas.env import pki_dir
from tenants.backup_stores import get_store
from tenants.errors import Unavailable
from tenants.host import exports
from tenants.models import Backup, Tenant

CHUNK = 1 << 20


def export_response(tenant: Tenant, backup: Backup) -> StreamingHttpResponse:
    if backup.store == "local":
        chunks = _from_host(tenant, backup)
    else:
        chunks = get_store(backup.store, settings.DATA_DIR).get(backup.location)
    response = StreamingHttpResponse(chunks, content_type="application/octet-stream")
    response["Content-Disposition"] = f'attachment; filename="{tenant.name}-{backup.pk}.dump"'
    response["Content-Length"] = str(backup.compressed_bytes)
    response["X-Checksum-SHA256"] = backup.sha256
    return response


def _from_host(tenant: Tenant, backup: Backup) -> Iterator[bytes]:
    """The export's bytes from its host, over TLS checked against the platform's CA
    (the host's certificate names its public address); opened before the answer
    starts, so that a host that does not answer is a 503, not a broken download."""
    host = tenant.host
    path = exports.signed_path(exports.signing_key(pki_dir()), backup.location)
    url = f"https://{host.public_host}:{settings.DBAAS_EXPORTS_PORT}{path}"
    context = ssl.create_default_context(cafile=str(pki_dir() / "ca.crt"))
    try:
        answer = urllib.request.urlopen(url, timeout=30, context=context)  # noqa: S310
    except urllib.error.HTTPError as exc:
        raise Unavailable(f"host {host.name} cannot serve this export: {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise Unavailable(
            f"the export is on host {host.name}, which does not answer now; try again later"
        ) from exc

    def chunks() -> Iterator[bytes]:
        with answer:
            while chunk := answer.read(CHUNK):
                yield chunk

    return chunks()
