"""Host tokens, on the control plane's side (the host's: tenants/host/identity.py).

A host's key is derived from the control plane's own secret, its name and its
token's generation, so it is kept nowhere: `manage.py host_token NAME` shows it
again, `--rotate` moves to the next generation and the old token stops working.
Reports (tenants/reports.py) and heartbeats are tasks of the SignedReport kind: one
whose signature is not that of the host it names is dropped, and said so in the log.
"""

import hashlib
import hmac
import logging
from pathlib import Path
from typing import Any

from celery import Task
from django.conf import settings
from django.db.models import F

from dbaas.env import pki_dir
from poolers import tls
from tenants.host import exports, identity
from tenants.host import tasks as host_tasks
from tenants.lifecycle import event_record
from tenants.models import Host

log = logging.getLogger(__name__)


def key_of(name: str, generation: int) -> bytes:
    message = f"dbaas host token\0{name}\0{generation}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).digest()


def token_of(host: Host) -> identity.HostToken:
    return identity.HostToken(
        host.name, host.token_generation, key_of(host.name, host.token_generation)
    )


def issue(name: str, *, rotate: bool = False) -> identity.HostToken:
    """The token of host `name` (its row made if there is none yet: it takes
    databases once it has registered), or with `rotate` that of its next generation."""
    host, _created = Host.objects.get_or_create(name=name)
    if rotate:
        Host.objects.filter(pk=host.pk).update(token_generation=F("token_generation") + 1)
        host.refresh_from_db()
    return token_of(host)


def refusal(task_name: str, args: tuple[Any, ...], signature: str) -> str | None:
    """Why a report is not to be applied; None if the host named first in `args`
    signed it with its token."""
    if not args or not isinstance(args[0], str):
        return "it names no host"
    if not signature:
        return "it is not signed"
    generation = (
        Host.objects.filter(name=args[0]).values_list("token_generation", flat=True).first()
    )
    if generation is None:
        return "no such host (make its token with `manage.py host_token NAME`)"
    expected = identity.report_signature(key_of(args[0], generation), task_name, args)
    if not hmac.compare_digest(expected, signature):
        return "its signature is not that of the host's token"
    return None


class SignedReport(Task):
    """A task only a host sends (by name): run only if the host named in its first
    argument signed it."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        why = refusal(self.name, args, kwargs.pop("host_signature", ""))
        if why:
            log.warning("dropped %s from %r: %s", self.name, args[0] if args else None, why)
            return None
        return super().__call__(*args, **kwargs)


def export_path(host: Host, location: str) -> str:
    """A signed path for `location` in `host`'s own store, which its export server
    answers for a few minutes."""
    return exports.signed_path(identity.exports_key(token_of(host).key), location)


def certificate_send(host: Host, request: str) -> None:
    """Sign a host's certificate request for the address it registered (whatever
    names the request asks for) and send the certificate to the host."""
    try:
        certificate = tls.sign_request(pki_dir(), request, host.public_host)
    except tls.TlsError as exc:
        event_record(host=host, action="host_certificate", message=f"refused: {exc}")
        return
    ca_certificate = (pki_dir() / "ca.crt").read_text()
    host_tasks.host_certificate.apply_async(
        (host.name, certificate, ca_certificate), queue=host.queue
    )
    event_record(host=host, action="host_certificate", message=f"signed for {host.public_host}")


def install_local(name: str, data: Path) -> identity.HostToken:
    """For a host this machine starts itself (`make run`, the tests): the platform's
    CA made if need be, and the host's token where the host looks for it."""
    tls.ensure_ca(pki_dir())
    token = issue(name)
    identity.write_token_file(data, token)
    return token
