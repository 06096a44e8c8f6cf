"""The wake-on-connect path: one process per host that listens on an activator socket
for every routed instance and, when PgBouncer opens a server connection to a
sleeping instance, holds it, has the instance woken, then splices the bytes
through to the instance's own socket.

PgBouncer authenticates clients itself, so only clients with a valid password ever
cause a server connection, hence a wake. Concurrent first connections share one
wake. The activator knows sockets and a `wake` callback, nothing of tenants.
"""

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from poolers.routes import Routes, keep_in_step

log = logging.getLogger(__name__)

# wake(instance_id, ready) -> the instance's socket directory once it accepts queries.
# The wake may call ready(socket_dir) before it returns, as soon as connections can
# go through, and finish its own bookkeeping after that.
WakeCallback = Callable[[str, Callable[[Path], None]], Path]


class Activator:
    """`handoff(instance_id)`, if given, runs `handoff_delay` seconds after a wake: it
    has the pooler replace the server connections it opened through here, so that
    they go straight to the instance and the activator stops carrying them.

    `instance_for_role(user)`, if given, serves the maintenance route: one socket
    for PgBouncer's shared `postgres` entry, whose server connections are each
    passed to the server of the user they log in as (PgBouncer has authenticated
    that user already), woken if need be."""

    def __init__(
        self,
        routes: Routes,
        wake: WakeCallback,
        socket_group: str | None,
        scan_interval: float = 0.5,
        handoff: Callable[[str], None] | None = None,
        handoff_delay: float = 5.0,
        instance_for_role: Callable[[str], str | None] | None = None,
    ) -> None:
        self.routes = routes
        self.wake = wake
        self.instance_for_role = instance_for_role
        self.handoff = handoff
        self.handoff_delay = handoff_delay
        self.socket_group = socket_group
        self.scan_interval = scan_interval
        self.servers: dict[str, asyncio.AbstractServer] = {}
        self.wakes: dict[str, asyncio.Future[Path]] = {}
        self._synced_ids: list[str] | None = None  # the routes listening now follows

    async def run(self) -> None:
        """Listen for every routed instance; pick up new and removed ones by scanning."""
        await keep_in_step(self.sync_listeners, self.scan_interval, "activator")

    async def sync_listeners(self) -> None:
        if self.instance_for_role is not None and MAINTENANCE not in self.servers:
            self.servers[MAINTENANCE] = await self._listen_on(
                self.routes.maintenance_dir(), self._serve_maintenance
            )
        ids = self.routes.instance_ids()
        if ids is self._synced_ids:
            return  # no route came or went since the last round
        wanted = set(ids) | ({MAINTENANCE} & set(self.servers))
        for instance_id in wanted - set(self.servers):
            self.servers[instance_id] = await self._listen(instance_id)
        for instance_id in set(self.servers) - wanted:
            server = self.servers.pop(instance_id)
            server.close()
            self.routes.activator_socket(instance_id).unlink(missing_ok=True)
        self._synced_ids = ids

    async def _listen(self, instance_id: str) -> asyncio.AbstractServer:
        return await self._listen_on(
            self.routes.activator_dir(instance_id),
            lambda r, w: self._serve(instance_id, r, w),
        )

    async def _listen_on(self, directory: Path, serve) -> asyncio.AbstractServer:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / ".s.PGSQL.5432"
        # Bind under a temporary name, then rename: the socket path exists at
        # every moment once it has existed (PgBouncer must never miss it).
        tmp = directory / f".s.PGSQL.5432.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(tmp))
        os.chmod(tmp, 0o770)
        if self.socket_group and os.geteuid() == 0:
            import grp

            gid = grp.getgrnam(self.socket_group).gr_gid
            os.chown(directory, 0, gid)
            os.chmod(directory, 0o750)
            os.chown(tmp, 0, gid)
        sock.listen(256)
        os.replace(tmp, path)
        return await asyncio.start_unix_server(serve, sock=sock)

    async def _serve(
        self, instance_id: str, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        try:
            socket_dir = await self._ensure_awake(instance_id)
            server_r, server_w = await asyncio.open_unix_connection(
                str(socket_dir / ".s.PGSQL.5432")
            )
        except Exception:
            log.exception("activator: could not wake %s", instance_id)
            await _refuse(client_w, WAKE_FAILED)
            return
        await asyncio.gather(
            _pipe(client_r, server_w), _pipe(server_r, client_w), return_exceptions=True
        )

    async def _serve_maintenance(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        """A server connection of PgBouncer's `postgres` entry: to the server of the
        user in its StartupMessage, woken if asleep; nobody's server if no tenant
        of this host has that user."""
        try:
            startup, user = await _read_startup(client_r, client_w)
            loop = asyncio.get_running_loop()
            assert self.instance_for_role is not None  # this route exists only then
            instance_id = await loop.run_in_executor(None, self.instance_for_role, user)
            if instance_id is None:
                client_w.write(_fatal("3D000", 'database "postgres" does not exist'))
                await client_w.drain()
                client_w.close()
                return
            socket_dir = await self._ensure_awake(instance_id)
            server_r, server_w = await asyncio.open_unix_connection(
                str(socket_dir / ".s.PGSQL.5432")
            )
        except Exception:
            log.exception("activator: could not route a maintenance connection")
            await _refuse(client_w, WAKE_FAILED)
            return
        server_w.write(startup)
        await asyncio.gather(
            _pipe(client_r, server_w), _pipe(server_r, client_w), return_exceptions=True
        )

    async def _ensure_awake(self, instance_id: str) -> Path:
        """One wake per instance at a time; everyone who arrives meanwhile shares it.

        The held connections go through as soon as the wake says the instance is
        ready, not when the wake has also recorded itself in the control plane."""
        pending = self.wakes.get(instance_id)
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = loop.create_future()

            def ready(socket_dir: Path) -> None:  # in the wake's thread
                loop.call_soon_threadsafe(_settle, pending, socket_dir, None)

            def finished(job: asyncio.Future) -> None:
                self.wakes.pop(instance_id, None)
                error = job.exception()
                _settle(pending, None if error else job.result(), error)
                if error is None and self.handoff is not None:
                    # Later, not now: the connections held during the wake are still
                    # logging in through here, and closing one would make PgBouncer
                    # wait server_login_retry.
                    loop.call_later(self.handoff_delay, self._hand_off, instance_id)

            job = loop.run_in_executor(None, self.wake, instance_id, ready)
            job.add_done_callback(finished)
            self.wakes[instance_id] = pending
        return await asyncio.shield(pending)

    def _hand_off(self, instance_id: str) -> None:
        def log_failure(job: asyncio.Future) -> None:
            if job.exception() is not None:
                log.warning("activator: hand-off of %s failed: %s", instance_id, job.exception())

        assert self.handoff is not None  # called only then
        job = asyncio.get_running_loop().run_in_executor(None, self.handoff, instance_id)
        job.add_done_callback(log_failure)


def _settle(future: asyncio.Future, result: Path | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


MAINTENANCE = "_maintenance"  # the key of the maintenance route's listener
SSL_REQUEST = 80877103
PROTOCOL_3 = 196608


async def _read_startup(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[bytes, str]:
    """The StartupMessage (as received) and its user; an SSLRequest first is
    declined, as a server on a unix socket would."""
    while True:
        header = await asyncio.wait_for(reader.readexactly(8), timeout=10)
        length, code = struct.unpack("!ii", header)
        if not 8 <= length <= 10000:
            raise ValueError(f"not a startup packet (length {length})")
        if code == SSL_REQUEST and length == 8:
            writer.write(b"N")
            await writer.drain()
            continue
        if code != PROTOCOL_3:
            raise ValueError(f"unsupported protocol {code}")
        body = await asyncio.wait_for(reader.readexactly(length - 8), timeout=10)
        fields = body.split(b"\0")
        params = dict(zip(fields[0::2], fields[1::2], strict=False))
        return header + body, params.get(b"user", b"").decode()


# What a client hears when its database could not be started: at once, through the
# pooler (which reports a failed server login), rather than after its login timeout.
WAKE_FAILED = ("58000", "the database could not be started; the operators are told, try again")


async def _refuse(writer: asyncio.StreamWriter, error: tuple[str, str]) -> None:
    """Answer the pooler's server connection with a FATAL error, then close it."""
    try:
        writer.write(_fatal(*error))
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def _fatal(code: str, message: str) -> bytes:
    fields = b"SFATAL\0C" + code.encode() + b"\0M" + message.encode() + b"\0\0"
    return b"E" + struct.pack("!i", len(fields) + 4) + fields


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
