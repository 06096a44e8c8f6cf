"""Where PgBouncer sends a database's server connections: a per-instance symlink.

PgBouncer's entry for a database says `host=<routes>/<instance>`; that path is a
symlink to either the instance's own socket directory (awake) or the activator's
socket directory for it (asleep). PgBouncer resolves `host=` at every connect, so
swapping the link (atomically, with rename) reroutes new server connections with
no RELOAD, which would stall every tenant of the host.
"""

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from dbaas.files import chown, make_dir

log = logging.getLogger(__name__)

# Seconds after which a directory's mtime is trusted to show every change before it.
MTIME_TRUSTED_AFTER = 1.0


class Routes:
    def __init__(self, root: Path, service_user: str) -> None:
        self.root = root  # <data>/pgbouncer/routes
        self.activator_root = root.parent / "activator"
        self.registrar_root = root.parent / "registrar"
        self.service_user = service_user
        self._listing: tuple[int, list[str]] | None = None  # (mtime, ids) last read

    def link(self, instance_id: str) -> Path:
        """The path PgBouncer's entry points at."""
        return self.root / instance_id

    def activator_dir(self, instance_id: str) -> Path:
        return self.activator_root / instance_id

    def activator_socket(self, instance_id: str) -> Path:
        return self.activator_dir(instance_id) / ".s.PGSQL.5432"

    def maintenance_dir(self) -> Path:
        """Where PgBouncer's shared `postgres` entry points: the activator routes each
        of its server connections to the server of the user it logs in as."""
        return self.activator_root / "_maintenance"

    def maintenance_socket(self) -> Path:
        return self.maintenance_dir() / ".s.PGSQL.5432"

    def registrar_dir(self, instance_id: str) -> Path:
        """Where the instance's server asks for its new databases to be routed
        (bound into the instance; see poolers/registrar.py)."""
        return self.registrar_root / instance_id

    def registrar_socket(self, instance_id: str) -> Path:
        return self.registrar_dir(instance_id) / ".s.registrar"

    def prepare(self) -> None:
        for path in (self.root, self.activator_root):
            make_dir(path, 0o750)
            chown(path, "root" if os.geteuid() == 0 else self.service_user, self.service_user)
        # Each instance's directory in here is bound into that instance alone.
        make_dir(self.registrar_root, 0o711)

    def point(self, instance_id: str, target: Path) -> bool:
        """Route the instance's server connections to `target`; False if already so."""
        link = self.link(instance_id)
        if self.target(instance_id) == target:
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{instance_id}.new"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, link)  # rename(2): PgBouncer sees the old or the new, never none
        return True

    def target(self, instance_id: str) -> Path | None:
        try:
            return Path(os.readlink(self.link(instance_id)))
        except FileNotFoundError:
            return None

    def points_to_activator(self, instance_id: str) -> bool:
        return self.target(instance_id) == self.activator_dir(instance_id)

    def remove(self, instance_id: str) -> None:
        self.link(instance_id).unlink(missing_ok=True)

    def instance_ids(self) -> list[str]:
        """The routed instances. The activator and the registrar ask twice a second;
        listing 10,000 links each time cost them a tenth of a core (bench/density.py),
        so the list is read again only when the directory has changed since (an
        entry added, removed or renamed sets its mtime). A directory changed within
        the last MTIME_TRUSTED_AFTER seconds is read anyway: its mtime comes from a
        coarse clock, and a second change in the same tick would not move it. The
        same list object is handed back while the directory is unchanged."""
        try:
            mtime = self.root.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        settled = time.time_ns() - mtime > MTIME_TRUSTED_AFTER * 1e9
        if self._listing is not None and self._listing[0] == mtime and settled:
            return self._listing[1]
        ids = sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))
        if self._listing is not None and self._listing[1] == ids:
            ids = self._listing[1]
        self._listing = (mtime, ids)
        return ids


async def keep_in_step(sync: Callable[[], Awaitable[None]], interval: float, who: str) -> None:
    """Run `sync` every `interval` seconds for ever: how the activator and the
    registrar pick up routes that appear and go. A failed round is logged; the next
    one tries again."""
    while True:
        try:
            await sync()
        except Exception:
            log.exception("%s: scanning routes failed", who)
        await asyncio.sleep(interval)
