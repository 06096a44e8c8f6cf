"""Logical exports kept in a host's own store (`DBAAS_BACKUP_STORE=local`), served
from that host to the control plane's web server, which streams them on to their
owner: the web server may run on another machine than the host that made them.

Each host serves `GET /exports/<key>` over TLS (its pooler's certificate, signed by
the platform's CA) on its public address, port DBAAS_EXPORTS_PORT, and only for a
URL the control plane signed: HMAC-SHA256 over the key and an expiry a few minutes
ahead, with a key derived from the host's token (tenants/host/identity.py), which
only that host and the control plane know: one host cannot sign URLs for another's
exports. A URL that is altered, expired or for a key outside the store answers 403
or 404, never a file.
"""

import hashlib
import hmac
import logging
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tenants.backup_stores.base import StoreError
from tenants.backup_stores.local import LocalStore

log = logging.getLogger(__name__)
URL_LIFETIME_SECONDS = 300
CHUNK = 1 << 20


def signature(key: bytes, location: str, expires: int) -> str:
    return hmac.new(key, f"{location}\n{expires}".encode(), hashlib.sha256).hexdigest()


def signed_path(key: bytes, location: str, now: float | None = None) -> str:
    """The path and query the control plane asks a host for."""
    expires = int((now or time.time()) + URL_LIFETIME_SECONDS)
    query = urllib.parse.urlencode({"expires": expires, "sig": signature(key, location, expires)})
    return f"/exports/{urllib.parse.quote(location)}?{query}"


class FetchError(Exception):
    """The host did not serve the object: it refused (status), or did not answer."""


def fetch(public_host: str, port: int, ca_cert: Path, path: str) -> Iterator[bytes]:
    """An object of another host's local store, as that host serves it, at `path`
    (signed_path, signed with that host's key), over TLS checked against the
    platform's CA (the host's certificate names its public address). Opened before
    the first chunk is asked for, so that a host that does not answer is an error at
    once, not a broken stream."""
    url = f"https://{public_host}:{port}{path}"
    location = urllib.parse.unquote(urllib.parse.urlsplit(path).path.removeprefix("/exports/"))
    context = ssl.create_default_context(cafile=str(ca_cert))
    try:
        answer = urllib.request.urlopen(url, timeout=30, context=context)  # noqa: S310
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{public_host} refused {location}: {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"{public_host} does not answer ({exc})") from exc

    def chunks() -> Iterator[bytes]:
        with answer:
            while chunk := answer.read(CHUNK):
                yield chunk

    return chunks()


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def make_server(
    address: str, port: int, store_root: Path, key: bytes, tls: ssl.SSLContext
) -> ThreadingHTTPServer:
    store = LocalStore(store_root)

    class Handler(BaseHTTPRequestHandler):
        server_version = "dbaas-exports"

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            parsed = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(parsed.query)
            location = urllib.parse.unquote(parsed.path.removeprefix("/exports/"))
            try:
                expires = int(query["expires"][0])
                given = query["sig"][0]
            except (KeyError, IndexError, ValueError):
                return self.send_error(HTTPStatus.FORBIDDEN, "not a signed URL")
            if not parsed.path.startswith("/exports/") or expires < time.time():
                return self.send_error(HTTPStatus.FORBIDDEN, "expired or not an export")
            if not hmac.compare_digest(given, signature(key, location, expires)):
                return self.send_error(HTTPStatus.FORBIDDEN, "bad signature")
            try:
                size = store.size(location)
            except StoreError:
                return self.send_error(HTTPStatus.NOT_FOUND, "no such export here")
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            for chunk in store.get(location, CHUNK):
                self.wfile.write(chunk)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.info("%s %s", self.address_string(), format % args)

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    return server
