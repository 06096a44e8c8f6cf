"""A logical export as an HTTP download, for the API and the web page alike: streamed
as it is read (never held in memory), from the S3 store, or from the host that keeps
it in its own store (tenants/host/exports.py), wherever that host is."""

from collections.abc import Iterator

from django.conf import settings
from django.http import StreamingHttpResponse

from dbaas.env import pki_dir
from tenants import host_identity
from tenants.backup_stores import get_store
from tenants.errors import Unavailable
from tenants.host import exports
from tenants.models import Backup, Tenant


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
    """The export's bytes from its host (a 503 if that host does not serve it now)."""
    host = tenant.host
    try:
        return exports.fetch(
            host.public_host,
            settings.DBAAS_EXPORTS_PORT,
            pki_dir() / "ca.crt",
            host_identity.export_path(host, backup.location),
        )
    except exports.FetchError as exc:
        raise Unavailable(
            f"the export is on host {host.name}, which cannot serve it now ({exc}); try again later"
        ) from exc
