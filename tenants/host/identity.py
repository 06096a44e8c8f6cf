"""Who this host is to the control plane: its host token, and what follows from it.

An operator makes a host's token on the control plane (`manage.py host_token NAME`)
and gives it to the host (DBAAS_HOST_TOKEN, DBAAS_HOST_TOKEN_FILE, or the file
`host_token` in its data directory). The token is `dbaas-host:<name>:<generation>:<key>`;
the key is the host's own secret, which the control plane derives again from its
own secret (tenants/host_identity.py), so it is stored nowhere on the control plane.
From the key:

- every report the host sends is signed (HMAC-SHA256 over the task's name and
  arguments): the control plane applies only reports signed by the host they name,
  so a host speaks only for itself and a message that is not from a host is dropped;
- the URLs its export server answers are signed with a key derived from it
  (tenants/host/exports.py), so only the control plane, which knows it, can sign them.

The host's TLS certificate is asked for with a certificate request at registration:
the key never leaves the host, the control plane signs it with the platform's CA for
the address the host registered, and sends it back on the host's queue
(tasks.host_certificate). A host never holds the CA's key.
"""

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

PREFIX = "dbaas-host"


class TokenError(Exception):
    """No usable host token: what is wrong, and how to get one."""


@dataclass(frozen=True)
class HostToken:
    name: str
    generation: int
    key: bytes

    def __str__(self) -> str:
        secret = base64.urlsafe_b64encode(self.key).decode().rstrip("=")
        return f"{PREFIX}:{self.name}:{self.generation}:{secret}"


def parse(text: str) -> HostToken:
    parts = text.strip().split(":")
    if len(parts) != 4 or parts[0] != PREFIX or not parts[2].isdigit():
        raise TokenError(f"not a host token (expected {PREFIX}:<name>:<generation>:<key>)")
    _prefix, name, generation, secret = parts
    try:
        key = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
    except ValueError as exc:
        raise TokenError("not a host token: its key is not base64") from exc
    if len(key) != 32:
        raise TokenError("not a host token: its key is not 32 bytes")
    return HostToken(name, int(generation), key)


def token_file(data: Path) -> Path:
    return data / "host_token"


def own_token() -> HostToken:
    """This host's token, from its settings or its data directory; it must name
    this host."""
    text = settings.DBAAS_HOST_TOKEN
    if not text:
        path = token_file(settings.DATA_DIR)
        if not path.exists():
            raise TokenError(
                f"host {settings.DBAAS_HOST_NAME} has no token: on the control plane, run "
                f"`manage.py host_token {settings.DBAAS_HOST_NAME}` and give what it prints "
                f"to this host as DBAAS_HOST_TOKEN (or put it in {path})"
            )
        text = path.read_text()
    token = parse(text)
    if token.name != settings.DBAAS_HOST_NAME:
        raise TokenError(
            f"the host token is for host {token.name!r}, but this host is "
            f"{settings.DBAAS_HOST_NAME!r} (DBAAS_HOST_NAME)"
        )
    return token


def write_token_file(data: Path, token: HostToken) -> None:
    """The token where a host started on this machine finds it (kept from others)."""
    path = token_file(data)
    if path.exists() and path.read_text().strip() == str(token):
        return
    data.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"{token}\n")
    os.replace(temporary, path)


def canonical(task_name: str, args: list[Any] | tuple[Any, ...]) -> bytes:
    """What a report's signature covers: the task and its arguments, as JSON
    (which is how they travel, so both ends see the same values)."""
    return json.dumps(
        [task_name, list(args)], sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode()


def report_signature(key: bytes, task_name: str, args: list[Any] | tuple[Any, ...]) -> str:
    return hmac.new(key, canonical(task_name, args), hashlib.sha256).hexdigest()


def exports_key(key: bytes) -> bytes:
    """The key of the URLs a host's export server answers."""
    return hmac.new(key, b"dbaas exports", hashlib.sha256).digest()
