"""A logical export as an HTTP download, for the API and the web page alike."""

from django.conf import settings
from django.http import StreamingHttpResponse

from tenants.backup_stores import get_store
from tenants.models import Backup, Tenant


def export_response(tenant: Tenant, backup: Backup) -> StreamingHttpResponse:
    """Streamed from the store as it is read: an export is never held in memory."""
    response = StreamingHttpResponse(
        get_store(backup.store, settings.DATA_DIR).get(backup.location),
        content_type="application/octet-stream",
    )
    response["Content-Disposition"] = f'attachment; filename="{tenant.name}-{backup.pk}.dump"'
    response["Content-Length"] = str(backup.compressed_bytes)
    response["X-Checksum-SHA256"] = backup.sha256
    return response
