"""A host's PgBouncer: its files (pgbouncer.ini and the auth file, rendered from
Jinja2 templates), its TLS certificate, its process, and its admin console.

A host runs several, each a shard of its tenants on a port of its own (pooler port +
shard): PgBouncer finds a database by walking the list of all it knows (RELOAD is
quadratic in them), so one PgBouncer per host stalls every client for ~1.6 s per
change at 10,000 databases (docs/density.md). The shards share the host's TLS
certificate, admin password and socket directory (socket names carry the port).

Knows nothing of tenants: callers pass each shard the full list of its owners
(a user and its databases) and of the databases every user may reach.
"""

import ctypes
import fcntl
import functools
import os
import pwd
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from dbaas.files import (
    chown,
    grant_traversal,
    make_dir,
    render_template,
    template_macros,
    write_atomic,
)
from poolers import advisories, tls
from poolers.scram import new_password, scram_secret

PACKAGE_DIR = Path(__file__).resolve().parent
ADMIN_USER = "dbaas_pooler_admin"

# Names PgBouncer is given: lowercase letters, digits, `_` and `-` (Prisma's shadow
# databases have a UUID in their names), at most 62 bytes. PgBouncer keeps a
# database name in 64 bytes; a longer name a client asks for is cut to 63 and
# treated as a database that does not exist. Our names never have 63 bytes, so such
# a cut name can never match an entry or an hba rule (see pgbouncer_hba.conf.j2).
NAME = re.compile(r"[a-z_][a-z0-9_-]{0,61}")


class PoolerError(Exception):
    pass


@dataclass(frozen=True)
class DatabaseEntry:
    name: str  # what clients put in the connection string
    dbname: str  # the database on the server
    socket_dir: Path  # where the server's socket is (a route link, see routes.py)
    pool_size: int
    max_connections: int
    # The only user that may log in to it; None: every user, each to its own
    # server (the maintenance database, routed by user; see activator.py).
    owner: str | None
    pool_mode: str | None = None  # None: the default (session)
    max_clients: int | None = None  # client connections at once; None: no limit
    # Another host's pooler to forward to (a database moved there), over TLS checked
    # against the platform's CA, instead of the local socket_dir.
    forward_to: tuple[str, int] | None = None


@dataclass(frozen=True)
class Features:
    """What the PgBouncer that runs can be configured to do, by its version."""

    prepared_statements: bool  # max_prepared_statements (1.21)
    track_extra_parameters: bool  # (1.20)
    client_limits: bool  # max_db_client_connections (1.24)

    @classmethod
    def of(cls, version: tuple[int, int, int]) -> "Features":
        return cls(
            prepared_statements=version >= (1, 21, 0),
            track_extra_parameters=version >= (1, 20, 0),
            client_limits=version >= (1, 24, 0),
        )


@dataclass(frozen=True)
class UserEntry:
    name: str
    secret: str  # SCRAM-SHA-256 secret, never a password
    max_server_connections: int | None = None  # over all its databases


@dataclass(frozen=True)
class Owner:
    """A user and the databases only it may log in to (each entry's owner is it)."""

    user: UserEntry
    databases: tuple[DatabaseEntry, ...] = ()


class PgBouncer:
    def __init__(
        self,
        root: Path,
        listen_addr: str,
        listen_port: int,
        service_user: str,
        max_client_conn: int = 10000,
        binary: str = "pgbouncer",
        pki: Path | None = None,
        shard: int = 0,
        login_timeout: int = 60,
    ) -> None:
        self.root = root  # <data>/pgbouncer: what the host's shards share
        self.shard = shard
        self.binary = binary
        self.listen_addr = listen_addr
        self.listen_port = listen_port
        self.service_user = service_user
        self.max_client_conn = max_client_conn
        self.login_timeout = login_timeout
        self.shard_dir = root / f"shard{shard}"  # this shard's own files
        self.ini = self.shard_dir / "pgbouncer.ini"
        self.auth_file = self.shard_dir / "userlist.txt"
        self.hba_file = self.shard_dir / "pgbouncer_hba.conf"
        self.tls_cert = root / "server.crt"
        self.tls_key = root / "server.key"
        # The platform's CA certificate, beside them: the pooler's account may not
        # enter the PKI directory (the CA's key is there).
        self.ca_cert = root / "ca.crt"
        self.pki = pki or root.parent / "pki"  # the platform's CA
        self.socket_dir = root.parent / "run" / "pgbouncer"
        # Its log, as a file too: poolers/login_guard.py reads the failed logins there.
        self.log_file = root / "log" / f"pgbouncer-shard{shard}.log"
        self._admin_password_file = root / "admin_password"
        self._admin_secret_file = root / "admin_secret"

    # -- files -------------------------------------------------------------------

    def prepare(self, public_host: str) -> None:
        """Directories, admin secret and TLS certificate: everything but the lists
        (what the shards share, then this shard's own directory)."""
        make_dir(self.root, 0o750, owner=None)
        # The pooler's account must reach its files and its binary (a checkout
        # under /root, say, is not open to it).
        grant_traversal(self.root, self.service_user)
        grant_traversal(Path(self.executable()), self.service_user)
        self._give_to_pooler(self.root)
        make_dir(self.socket_dir, 0o750, owner=self.service_user)
        make_dir(self.log_file.parent, 0o750, owner=self.service_user)
        if not self._admin_secret_file.exists():
            password = new_password()
            write_atomic(self._admin_password_file, password, mode=0o600)
            write_atomic(self._admin_secret_file, scram_secret(password), mode=0o600)
        # The host's certificate, signed by the platform's CA (poolers/tls.py).
        tls.ensure_host_certificate(self.pki, self.tls_cert, self.tls_key, public_host)
        write_atomic(self.ca_cert, (self.pki / "ca.crt").read_text(), mode=0o640)
        for path in (self.tls_key, self.tls_cert, self.ca_cert):
            os.chmod(path, 0o640)
            self._give_to_pooler(path)
        self.prepare_shard()

    def prepare_shard(self) -> None:
        """This shard's directory, and its files readable by the pooler's account
        (which may have changed since they were written); after one `prepare` of
        the host's shards."""
        make_dir(self.shard_dir, 0o750, owner=None)
        self._give_to_pooler(self.shard_dir)
        for path in (self.ini, self.auth_file, self.hba_file):
            if path.exists():
                os.chmod(path, 0o640)
                self._give_to_pooler(path)

    def _give_to_pooler(self, path: Path) -> None:
        """Group-owned by the pooler's account (owned by it when not run as root)."""
        chown(path, "root" if os.geteuid() == 0 else self.service_user, group_of=self.service_user)

    @property
    def admin_password(self) -> str:
        return self._admin_password_file.read_text().strip()

    def files_state(self) -> tuple:
        """What tells whether the files were touched since (written anew: replaced);
        () if one is missing."""
        state = []
        for path in (self.ini, self.auth_file, self.hba_file):
            try:
                st = path.stat()
            except FileNotFoundError:
                return ()
            state.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(state)

    def write_config(self, shared: list[DatabaseEntry], owners: list[Owner]) -> bool:
        """Render pgbouncer.ini, its hba file and the auth file from the databases
        every user may reach (`shared`: the maintenance database) and each owner's;
        True if any file changed. An owner's lines are rendered once and kept while
        the same Owner object comes back (for this shard, while it is in the files):
        a change renders its own lines, not the shard's thousands."""
        _check_names(shared, owners)
        admin = UserEntry(ADMIN_USER, self._admin_secret_file.read_text().strip())
        shared = sorted(shared, key=lambda d: d.name)
        shared_names = tuple(db.name for db in shared)
        features = self.features
        macros = template_macros(PACKAGE_DIR, "pgbouncer_lines.j2")
        kept = _owner_lines.get(self.ini)
        if kept is None or kept.made_with != (shared_names, features):
            kept = _OwnerLines(made_with=(shared_names, features))
        lines: dict[str, tuple[Owner, _Lines]] = {}
        for owner in sorted(owners, key=_owner_name):
            name = owner.user.name
            cached = kept.by_user.get(name)
            if cached is None or cached[0] is not owner:
                cached = (owner, _render_lines(macros, owner, shared_names, features))
            lines[name] = cached
        _owner_lines[self.ini] = _OwnerLines(made_with=kept.made_with, by_user=lines)
        rendered = [parts for _owner, parts in lines.values()]
        ini = render_template(
            PACKAGE_DIR,
            "pgbouncer.ini.j2",
            database_lines=[macros.database(db, features) for db in shared]
            + [parts.databases for parts in rendered if parts.databases],
            user_lines=[parts.user_limit for parts in rendered if parts.user_limit],
            listen_addr=self.listen_addr,
            listen_port=self.listen_port,
            socket_dir=self.socket_dir,
            auth_file=self.auth_file,
            hba_file=self.hba_file,
            log_file=self.log_file,
            admin_user=ADMIN_USER,
            max_client_conn=self.max_client_conn,
            login_timeout=self.login_timeout,
            tls_key=self.tls_key,
            tls_cert=self.tls_cert,
            ca_file=self.ca_cert,
            features=features,
        )
        hba = render_template(
            PACKAGE_DIR,
            "pgbouncer_hba.conf.j2",
            admin_user=ADMIN_USER,
            owner_rules=[parts.rules for parts in rendered if parts.rules],
        )
        userlist = render_template(
            PACKAGE_DIR,
            "userlist.txt.j2",
            auth_lines=[macros.auth(admin)] + [parts.auth for parts in rendered],
        )
        owner_group = self.service_user
        changed = False
        # The ini last: it names the other two, which must be complete by then. Not
        # forced to disk: the host renders them again before its PgBouncers start
        # (agent.pooler_render), and each create would wait for three fsyncs.
        for path, text in ((self.auth_file, userlist), (self.hba_file, hba), (self.ini, ini)):
            if write_atomic(path, text, mode=0o640, durable=False):
                chown(path, "root" if os.geteuid() == 0 else owner_group, group_of=owner_group)
                changed = True
        return changed

    @contextmanager
    def config_lock(self) -> Iterator[None]:
        """Serialise render+reload of this shard across worker processes."""
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.shard_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- process -----------------------------------------------------------------

    def executable(self) -> str:
        """The binary's real path (build/pgbouncer/pgbouncer is a link to the chosen one)."""
        return os.path.realpath(shutil.which(self.binary) or self.binary)

    def command(self) -> list[str]:
        return [self.executable(), str(self.ini)]

    @property
    def version(self) -> advisories.Version:
        """The binary's version, asked once per binary file (it is on the path of
        every provisioning's render)."""
        path = shutil.which(self.binary) or self.binary
        return _version_of(path, os.stat(path).st_mtime_ns)

    @property
    def features(self) -> Features:
        return Features.of(self.version)

    def exposure(self) -> advisories.Exposure:
        """Is this PgBouncer, with the files rendered now, open to a known flaw?"""
        return advisories.exposure(self.version, self.ini, self.hba_file)

    def become_service_user(self) -> None:
        """Go on as the service account (from root), for good."""
        if os.geteuid() == 0:
            pw = pwd.getpwnam(self.service_user)
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)

    def spawn(self) -> subprocess.Popen:
        """Start pgbouncer, as a child that dies with this process (its supervisor,
        run_pooler, which has become the service account): one left behind would
        hold the port and serve from files nobody renders any more."""
        return subprocess.Popen(self.command(), preexec_fn=_dies_with(os.getpid()))

    # -- admin console -------------------------------------------------------------

    def admin_connect(self, timeout: float = 5) -> psycopg.Connection:
        # The admin console speaks only the simple query protocol: ClientCursor.
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.listen_port,
            dbname="pgbouncer",
            user=ADMIN_USER,
            password=self.admin_password,
            autocommit=True,
            connect_timeout=max(1, int(timeout)),
            cursor_factory=psycopg.ClientCursor,
        )

    def admin(self, *commands: str) -> list[dict]:
        """Run admin console commands in one session; the rows of the last. The
        session is kept for the next call of this process (a login is a SCRAM
        exchange, and the host asks its shards several times a second); one kept
        from before a restart of the pooler is replaced, and the commands, which are
        all idempotent, run again on the new one."""
        key = (os.getpid(), str(self.socket_dir), self.listen_port)
        conn = _admin_sessions.take(key)
        if conn is not None:
            try:
                return self._admin_run(conn, key, commands)
            except _SessionLost:
                pass
        try:
            conn = self.admin_connect()
        except psycopg.Error as exc:
            raise PoolerError(f"pgbouncer {commands[0].split()[0]} failed: {exc}") from exc
        try:
            return self._admin_run(conn, key, commands)
        except _SessionLost as lost:
            raise PoolerError(f"pgbouncer {lost.command.split()[0]} failed: {lost}") from lost

    def _admin_run(
        self, conn: psycopg.Connection, key: tuple, commands: tuple[str, ...]
    ) -> list[dict]:
        rows: list[dict] = []
        command = commands[0]
        try:
            with conn.cursor() as cur:
                for command in commands:
                    cur.execute(command)
                    if cur.description is None:  # a command, not a SHOW
                        rows = []
                        continue
                    cols = [c.name for c in cur.description]
                    rows = [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
        except psycopg.Error as exc:
            if conn.broken:
                conn.close()
                raise _SessionLost(command, exc) from exc
            _admin_sessions.give_back(key, conn)  # an answer, such as "not paused"
            raise PoolerError(f"pgbouncer {command.split()[0]} failed: {exc}") from exc
        _admin_sessions.give_back(key, conn)
        return rows

    def reload(self) -> None:
        self.admin("RELOAD")

    def is_up(self) -> bool:
        try:
            self.admin("SHOW VERSION")
        except (PoolerError, OSError):  # OSError: not prepared yet, no admin password
            return False
        return True

    def database_names(self) -> set[str]:
        return {row["name"] for row in self.admin("SHOW DATABASES")} - {"pgbouncer"}

    def reconnect(self, *databases: str) -> None:
        """Close the databases' server connections as they are released, so new
        ones follow the current route (one admin session for all of them)."""
        if databases:
            self.admin(*(f"RECONNECT {_ident(name)}" for name in databases))

    def close_servers(self, databases: list[str], timeout: float = 3) -> bool:
        """Close the server connections of `databases` (idle ones at once, others as
        their clients release them: RECONNECT) and wait up to `timeout` seconds for
        them to be gone; False if some are still in use. The platform never sends
        KILL: PgBouncer 1.24.1 can crash on it while clients log in
        (pgbouncer/pgbouncer#1401)."""
        names = set(databases) & self.database_names()
        for name in names:
            self._ignoring_unknown(f"RECONNECT {_ident(name)}")
        deadline = time.monotonic() + timeout
        while True:
            pools = [row for (db, _user), row in self.pools().items() if db in names]
            if not any(row.get(c, 0) for row in pools for c in SERVER_COLUMNS):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def pause(self, databases: list[str], release: Callable[[], None], timeout: float = 30) -> None:
        """Hold the new clients of `databases` (they wait in the pooler) until
        resume(). PAUSE returns only once their server connections are gone:
        `release()`, called once PgBouncer holds new clients, must end them (it stops
        the server; its clients are disconnected). Not KILL: PgBouncer 1.24.1 can
        crash on a KILL while clients log in (pgbouncer/pgbouncer#1401)."""
        known = [name for name in databases if name in self.database_names()]
        errors: list[Exception] = []

        def pause_one(name: str) -> None:
            try:
                self.admin(f"PAUSE {_ident(name)}")
            except PoolerError as exc:
                if "already" not in str(exc):  # paused by an earlier attempt
                    errors.append(exc)

        threads = [threading.Thread(target=pause_one, args=(n,), daemon=True) for n in known]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout
        while not errors and not self._paused(known):
            if time.monotonic() > deadline:
                raise PoolerError(f"pgbouncer did not pause {known}")
            time.sleep(0.01)
        release()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if errors:
            raise errors[0]
        if any(thread.is_alive() for thread in threads):
            raise PoolerError(f"pgbouncer PAUSE of {known} did not finish in {timeout} s")

    def _paused(self, databases: list[str]) -> bool:
        paused = {row["name"] for row in self.admin("SHOW DATABASES") if row.get("paused")}
        return set(databases) <= paused

    def resume(self, database: str) -> bool:
        """Undo a pause (PAUSE or KILL): the database takes clients again."""
        return self._ignoring_unknown(f"RESUME {_ident(database)}")

    def _ignoring_unknown(self, command: str) -> bool:
        try:
            self.admin(command)
        except PoolerError as exc:
            if "no such database" in str(exc) or "not paused" in str(exc):
                return False
            raise
        return True

    def pools(self) -> dict[tuple[str, str], dict]:
        """SHOW POOLS by (database, user)."""
        return {(row["database"], row["user"]): row for row in self.admin("SHOW POOLS")}

    def stats(self) -> dict[str, dict]:
        return {row["database"]: row for row in self.admin("SHOW STATS")}


class _SessionLost(Exception):
    """An admin session ended under a command (the pooler restarted, say)."""

    def __init__(self, command: str, cause: psycopg.Error):
        super().__init__(str(cause))
        self.command = command


class _AdminSessions:
    """Idle admin console sessions, by (process, socket directory, port): taken by
    one thread at a time (PAUSE blocks its session while others ask SHOW), a few
    kept per pooler."""

    KEEP = 2

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[tuple, list[psycopg.Connection]] = {}

    def take(self, key: tuple) -> psycopg.Connection | None:
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def give_back(self, key: tuple, conn: psycopg.Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.KEEP and not conn.closed:
                idle.append(conn)
                return
        conn.close()


_admin_sessions = _AdminSessions()


@dataclass(frozen=True)
class _Lines:
    """An owner's part of a shard's files (lines joined by newlines; "": none)."""

    databases: str  # pgbouncer.ini [databases]
    user_limit: str  # pgbouncer.ini [users]
    rules: str  # the hba file
    auth: str  # the auth file


@dataclass
class _OwnerLines:
    """A shard's rendered lines, by owner, with the Owner each was rendered from;
    good for as long as the shared databases' names and the features are the same."""

    made_with: tuple
    by_user: dict[str, tuple[Owner, _Lines]] = field(default_factory=dict)


def _render_lines(macros: Any, owner: Owner, shared: tuple[str, ...], features: Features) -> _Lines:
    _check_owner(owner)
    databases = sorted(owner.databases, key=lambda d: d.name)
    names = tuple(db.name for db in databases)
    user = owner.user
    return _Lines(
        databases="\n".join(macros.database(db, features) for db in databases),
        user_limit=macros.user_limit(user) if user.max_server_connections else "",
        rules=macros.owner_rules(user.name, (*names, *shared)) if names else "",
        auth=macros.auth(user),
    )


def _owner_name(owner: Owner) -> str:
    return owner.user.name


# Each shard's rendered lines, by its ini file (write_config).
_owner_lines: dict[Path, _OwnerLines] = {}

# SHOW POOLS' columns that count server connections, in every state.
SERVER_COLUMNS = ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")


def _dies_with(parent: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGTERM when `parent` ends, however it ends.
    It runs after the child took the service account's ids (which would clear it)."""

    def set_parent_death_signal() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent ended before the signal was set
            os._exit(1)

    return set_parent_death_signal


PR_SET_PDEATHSIG = 1


@functools.cache
def _version_of(path: str, mtime_ns: int) -> advisories.Version:
    return advisories.installed_version(path)


def _check_names(shared: list[DatabaseEntry], owners: list[Owner]) -> None:
    """What holds for a shard as a whole (each owner is checked as its lines are
    rendered: _check_owner)."""
    names = [owner.user.name for owner in owners]
    if ADMIN_USER in names or len(set(names)) != len(names):
        raise PoolerError("user names must be unique per host and not the admin's")
    aliases = [db.name for db in shared]
    aliases += [db.name for owner in owners for db in owner.databases]
    if "pgbouncer" in aliases or len(set(aliases)) != len(aliases):
        raise PoolerError("database names must be unique per host and not 'pgbouncer'")
    for db in shared:
        if db.owner is not None or not NAME.fullmatch(db.name):
            raise PoolerError(f"not a database every user may reach: {db.name!r}")


def _check_owner(owner: Owner) -> None:
    for db in owner.databases:
        if db.owner != owner.user.name:
            raise PoolerError(f"{db.name!r} is owned by {db.owner!r}, not {owner.user.name!r}")
    for name in (owner.user.name, *(db.name for db in owner.databases)):
        if not NAME.fullmatch(name):
            raise PoolerError(f"not a name this pooler accepts: {name!r}")


def _ident(name: str) -> str:
    """A database name as the admin console's commands take it (quoted if needed)."""
    if not NAME.fullmatch(name):
        raise PoolerError(f"not a database name pgbouncer commands accept: {name!r}")
    return name if re.fullmatch(r"[a-z0-9_]+", name) else f'"{name}"'
