"""The registrar of databases: one socket per routed instance, bound into that
instance, on which its server (the platform's module, unikernel_images/pg_module)
asks before and after CREATE / DROP / RENAME DATABASE, so that a database a tenant
makes is reachable through the host's pooler the moment CREATE DATABASE returns.

A request is one line, `<verb> <name>`; the answer `ok` or `error <message>`. Verbs:
`reserve` (before CREATE: may this name be used?), `created` (after it: route it),
`release` (the CREATE failed), `dropping` (before DROP: stop routing it), `dropped`.
What a verb does is the `decide` callback's business (it knows tenants); this module
knows sockets. The instance is identified by the socket it spoke on, never by what
it says.
"""

import asyncio
import logging
import os
import re
from collections.abc import Callable

from poolers.routes import Routes, keep_in_step

log = logging.getLogger(__name__)

VERBS = ("reserve", "created", "release", "dropping", "dropped")
# What a server can send us: a verb and a database name (63 bytes at most; the
# module replaces what is not printable ASCII by "?", which no routed name has).
REQUEST = re.compile(r"(?P<verb>[a-z]+) (?P<name>[ -~]{1,63})")
MAX_LINE = 200

# decide(instance_id, verb, name) -> None if done, else the message for the user.
Decide = Callable[[str, str, str], str | None]


class Registrar:
    def __init__(self, routes: Routes, decide: Decide, scan_interval: float = 0.5) -> None:
        self.routes = routes
        self.decide = decide
        self.scan_interval = scan_interval
        self.servers: dict[str, asyncio.AbstractServer] = {}
        self._synced_ids: list[str] | None = None  # the routes listening now follows

    async def run(self) -> None:
        await keep_in_step(self.sync_listeners, self.scan_interval, "registrar")

    async def sync_listeners(self) -> None:
        ids = self.routes.instance_ids()
        if ids is self._synced_ids:
            return  # no route came or went since the last round
        wanted = set(ids)
        for instance_id in wanted - set(self.servers):
            self.servers[instance_id] = await self._listen(instance_id)
        for instance_id in set(self.servers) - wanted:
            self.servers.pop(instance_id).close()
            self.routes.registrar_socket(instance_id).unlink(missing_ok=True)
        self._synced_ids = ids

    async def _listen(self, instance_id: str) -> asyncio.AbstractServer:
        directory = self.routes.registrar_dir(instance_id)
        directory.mkdir(mode=0o711, parents=True, exist_ok=True)
        path = self.routes.registrar_socket(instance_id)
        tmp = directory / f".s.registrar.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(
            lambda r, w: self._serve(instance_id, r, w), path=str(tmp)
        )
        # The instance runs as its own uid: it may connect, nobody else can reach
        # the directory (its parent is root's, 0711, and unlisted).
        os.chmod(tmp, 0o666)
        os.replace(tmp, path)
        return server

    async def _serve(
        self, instance_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=10)
            answer = await self._answer(instance_id, line[:MAX_LINE].decode(errors="replace"))
            writer.write(answer.encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, instance_id: str, line: str) -> str:
        match = REQUEST.fullmatch(line.rstrip("\n"))
        if not match or match["verb"] not in VERBS:
            return "error the platform did not understand the request"
        loop = asyncio.get_running_loop()
        try:
            refusal = await loop.run_in_executor(
                None, self.decide, instance_id, match["verb"], match["name"]
            )
        except Exception:
            log.exception(
                "registrar: %s %s for %s failed", match["verb"], match["name"], instance_id
            )
            return "error the platform could not register the database; try again"
        if refusal is None:
            return "ok"
        return "error " + " ".join(refusal.split())
