"""What a host holds of its tenants, in a SQLite file of its own
(`<data>/host.sqlite3`), shared by its processes (the agent's workers, the
activator, the pooler's renderer): the spec the control plane last sent for each
tenant, the state the host has it in, and the databases each made.

The host reads nothing else to render its pooler, wake a tenant, answer its
registrar or reconcile; it never connects to the control plane's database
(docs/spec-agent-plan.md). Every change is one SQLite transaction; WAL lets readers
go on while one process writes.
"""

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tenants.host.spec import TenantSpec

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    instance_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    -- The state the host has it in (running, sleeping, ...), as it reported it.
    state TEXT NOT NULL,
    -- Numbers the host's reports on this tenant, so that the control plane applies
    -- them in order whatever order they arrive in.
    seq INTEGER NOT NULL DEFAULT 0,
    -- When its state here last changed (epoch seconds): a reconcile list built
    -- before that says nothing newer.
    changed REAL NOT NULL DEFAULT 0,
    last_active REAL,
    xact_count INTEGER NOT NULL DEFAULT 0
);
-- Who is running (the crash watch, twice a second) without reading every spec.
CREATE INDEX IF NOT EXISTS tenants_by_state ON tenants (state, instance_id);
CREATE TABLE IF NOT EXISTS databases (
    -- A name the pooler routes is unique on the host, whoever made it.
    name TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL REFERENCES tenants (instance_id) ON DELETE CASCADE,
    state TEXT NOT NULL  -- reserved (CREATE DATABASE under way), active
);
CREATE INDEX IF NOT EXISTS databases_of ON databases (instance_id);
-- Work this host has taken on (a backup, a restore, a move step), by kind and the
-- control plane's id: a message delivered twice is done once.
CREATE TABLE IF NOT EXISTS jobs (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    taken REAL NOT NULL,
    PRIMARY KEY (kind, id)
);
-- Tenants moved to another host: this host's pooler forwards their old connection
-- strings there until `until` (epoch seconds).
CREATE TABLE IF NOT EXISTS forwards (
    instance_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    address TEXT NOT NULL,
    port INTEGER NOT NULL,
    until REAL NOT NULL
);
-- When the host's periodic work last did what (epoch seconds).
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value REAL NOT NULL
);
"""


# Connections per thread (sqlite3 connections are not to be shared between
# threads), each kept for its process (see HostStore._connection).
_local = threading.local()


# The specs this process has parsed, by instance id: (the JSON, its databases, the
# spec made of them).
_specs: dict[str, tuple[str, tuple[str, ...], TenantSpec]] = {}


def _parsed(instance_id: str, spec: str, databases: tuple[str, ...]) -> TenantSpec:
    """The spec stored as `spec` with `databases`: the one made last time if the
    same (a frozen dataclass: shared safely)."""
    cached = _specs.get(instance_id)
    if cached is not None and cached[0] == spec and cached[1] == databases:
        return cached[2]
    parsed = TenantSpec.of_json(json.loads(spec)).but(databases=databases)
    _specs[instance_id] = (spec, databases, parsed)
    return parsed


class HostStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _connection(self) -> sqlite3.Connection:
        """This process's and thread's connection to the store, opened once (never
        one made before a fork, nor another thread's); again if the file was
        replaced. A reconcile of 10,000 tenants makes tens of thousands of calls."""
        conns = _local.__dict__.setdefault("connections", {})
        key = (os.getpid(), self.path)
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = None
        cached = conns.get(key)
        if cached is not None and cached[1] == inode:
            return cached[0]
        if cached is not None:
            cached[0].close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA foreign_keys = ON")
        # Durable at checkpoints, not at each commit: a host's store is rebuilt
        # from the control plane's lists (host_reconcile) after a power loss,
        # and a commit per tenant per reconcile must not cost an fsync each.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(SCHEMA)
        conns[key] = (conn, os.stat(self.path).st_ino)
        return conn

    @contextmanager
    def _db(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """The connection, in one transaction: committed on the way out, rolled
        back on an error. One that only reads (`write=False`) neither waits for a
        writer nor holds one up (WAL: it reads the last committed state); one that
        writes takes the write lock at once, so that what it read before writing
        is what it writes over."""
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- tenants -------------------------------------------------------------------

    def put(
        self, spec: TenantSpec, state: str | None = None, *, decided_here: bool = False
    ) -> None:
        """Keep (or replace) the tenant's spec; its state too if given, else the
        spec's for a tenant new here.

        What this host decides of a tenant stays as it decided it, whatever an older
        spec from the control plane says: the databases its owner made here (the
        spec's list is taken only for a tenant new here: moved in, or a store
        rebuilt) and whether it is over its storage limit (unless `decided_here`:
        the host changing it)."""
        with self._db() as db:
            row = db.execute(
                "SELECT spec FROM tenants WHERE instance_id = ?", (spec.instance_id,)
            ).fetchone()
            new = row is None
            if row is not None and not decided_here:
                held = json.loads(row[0])
                spec = spec.but(storage_read_only=held.get("storage_read_only"))
            text = json.dumps(spec.as_json())
            if row is not None and state is None and row[0] == text:
                return  # nothing new: no write (a reconcile puts every tenant)
            # The state given, else the one held (or the spec's, for a tenant new here).
            now = time.time()
            db.execute(
                "INSERT INTO tenants (instance_id, spec, state, changed) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (instance_id) DO UPDATE SET spec = excluded.spec, "
                "state = coalesce(?, tenants.state), "
                "changed = CASE WHEN ? IS NULL THEN tenants.changed ELSE ? END",
                (spec.instance_id, text, state or spec.state, now) + (state, state, now),
            )
            for name in spec.databases if new else ():
                db.execute(
                    "INSERT INTO databases (name, instance_id, state) VALUES (?, ?, 'active') "
                    "ON CONFLICT (name) DO UPDATE SET state = 'active' "
                    "WHERE databases.instance_id = excluded.instance_id",
                    (name, spec.instance_id),
                )

    def get(self, instance_id: str) -> TenantSpec | None:
        with self._db(write=False) as db:
            row = db.execute(
                "SELECT spec FROM tenants WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            if row is None:
                return None
            return self._with_databases(db, instance_id, row[0])

    def state(self, instance_id: str) -> str | None:
        with self._db(write=False) as db:
            row = db.execute(
                "SELECT state FROM tenants WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            return row[0] if row else None

    def all(
        self,
        states: tuple[str, ...] | None = None,
        shard: tuple[int, int] | None = None,
        ids: set[str] | None = None,
    ) -> list[tuple[TenantSpec, str]]:
        """Every tenant held here (in one of `states`; whose pk modulo shard[1] is
        shard[0], if given: one pooler's or one reconcile's share; among `ids`, if
        given), with its state here. A tenant unchanged since this process last
        read it is the same object as then (reconcile reads thousands per tick, and
        the pooler's renderer tells an unchanged shard by that)."""
        where, args = "1 = 1", list[Any]()
        if states is not None:
            where += f" AND t.state IN ({', '.join('?' for _ in states)})"
            args += states
        if shard is not None:  # instance ids are t<pk>
            where += " AND CAST(substr(t.instance_id, 2) AS INTEGER) % ? = ?"
            args += (shard[1], shard[0])
        with self._db(write=False) as db:
            rows = [
                row
                for row in db.execute(
                    f"SELECT t.instance_id, t.spec, t.state FROM tenants t WHERE {where}",  # noqa: S608 - placeholders only
                    args,
                )
                if ids is None or row[0] in ids
            ]
            databases: dict[str, list[str]] = {}
            for name, iid in db.execute(
                "SELECT d.name, d.instance_id FROM databases d JOIN tenants t "  # noqa: S608 - placeholders only
                f"ON t.instance_id = d.instance_id WHERE d.state = 'active' AND {where} "
                "ORDER BY d.name",
                args,
            ):
                databases.setdefault(iid, []).append(name)
        if states is None and shard is None and ids is None:
            # Every tenant held here: what this process parsed of any other is
            # of a tenant deleted or moved away since.
            for gone in _specs.keys() - {row[0] for row in rows}:
                del _specs[gone]
        return [
            (_parsed(iid, spec, tuple(databases.get(iid, ()))), state) for iid, spec, state in rows
        ]

    def instance_ids(self, states: tuple[str, ...]) -> set[str]:
        """The instances of the tenants in one of `states` here, and nothing else of
        them (the crash watch asks twice a second)."""
        marks = ", ".join("?" for _ in states)
        with self._db(write=False) as db:
            rows = db.execute(f"SELECT instance_id FROM tenants WHERE state IN ({marks})", states)  # noqa: S608 - placeholders only
            return {row[0] for row in rows}

    def asleep_since(self, before: float) -> set[str]:
        """The tenants sleeping here since before `before` (epoch seconds)."""
        with self._db(write=False) as db:
            rows = db.execute(
                "SELECT instance_id FROM tenants WHERE state = 'sleeping' AND changed < ?",
                (before,),
            )
            return {row[0] for row in rows}

    def meta(self, key: str) -> float | None:
        with self._db(write=False) as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return row[0] if row else None

    def metas(self, prefix: str) -> dict[str, float]:
        """Every value whose key starts with `prefix`, by the rest of its key."""
        with self._db(write=False) as db:
            rows = db.execute(
                "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
            )
            return {key[len(prefix) :]: value for key, value in rows}

    def meta_set(self, key: str, value: float) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def set_state(self, instance_id: str, state: str, *, active: bool = False) -> int:
        """The tenant's state here; returns the number of the report that says so."""
        with self._db() as db:
            db.execute(
                "UPDATE tenants SET state = ?, seq = seq + 1, changed = ?, "
                "last_active = CASE WHEN ? THEN ? ELSE last_active END WHERE instance_id = ?",
                (state, time.time(), active, time.time(), instance_id),
            )
            row = db.execute(
                "SELECT seq FROM tenants WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            return row[0] if row else 0

    def changed(self, instance_id: str) -> float:
        """When the tenant's state here last changed, or it came here (0: unknown)."""
        with self._db(write=False) as db:
            row = db.execute(
                "SELECT changed FROM tenants WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            return row[0] if row else 0.0

    def activity(self, instance_id: str) -> tuple[float | None, int]:
        """When a client last used the tenant (epoch seconds; None: not seen yet),
        and the pooler's transaction count then."""
        with self._db(write=False) as db:
            row = db.execute(
                "SELECT last_active, xact_count FROM tenants WHERE instance_id = ?",
                (instance_id,),
            ).fetchone()
            return (row[0], row[1]) if row else (None, 0)

    def activity_seen(self, instance_id: str, xact_count: int) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE tenants SET last_active = ?, xact_count = ? WHERE instance_id = ?",
                (time.time(), xact_count, instance_id),
            )

    def remove(self, instance_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM tenants WHERE instance_id = ?", (instance_id,))
            db.execute("DELETE FROM meta WHERE key = ?", (f"size:{instance_id}",))
        _specs.pop(instance_id, None)

    def instance_for_role(self, role: str, states: tuple[str, ...]) -> str | None:
        """The instance of the tenant whose owner role this is (`<name>_<slug>`).
        The role is named as the tenant's first database, which is routed here:
        that one tenant is looked at, not all of them (the activator asks at each
        connection to the maintenance database; reading 10,000 specs took 25 ms)."""
        owner = self.database_owner(role)
        if owner is not None:
            with self._db(write=False) as db:
                row = db.execute(
                    "SELECT spec, state FROM tenants WHERE instance_id = ?", (owner,)
                ).fetchone()
                spec = self._with_databases(db, owner, row[0]) if row else None
            if spec is not None and spec.role_name == role:
                return owner if row[1] in states else None
        # A tenant whose first database is not routed (a store from before that).
        for spec, _state in self.all(states):
            if spec.role_name == role:
                return spec.instance_id
        return None

    # -- work taken on ---------------------------------------------------------------

    def job_take(self, kind: str, job: dict) -> bool:
        """True the first time only: this host does that piece of work once. A job
        is known by its id and when the control plane made it (ids alone may come
        again from a control-plane database made anew)."""
        job_id = f"{job['id']}@{job['created']}"
        with self._db() as db:
            return (
                db.execute(
                    "INSERT OR IGNORE INTO jobs (kind, id, taken) VALUES (?, ?, ?)",
                    (kind, job_id, time.time()),
                ).rowcount
                > 0
            )

    # -- tenants moved away ----------------------------------------------------------

    def forward_put(self, spec: TenantSpec, address: str, port: int, until: float) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO forwards (instance_id, spec, address, port, until) "
                "VALUES (?, ?, ?, ?, ?)",
                (spec.instance_id, json.dumps(spec.as_json()), address, port, until),
            )

    def forward_update(self, spec: TenantSpec) -> bool:
        """A forwarded tenant's new spec (its new password, say); False if this host
        forwards no such tenant."""
        with self._db() as db:
            return (
                db.execute(
                    "UPDATE forwards SET spec = ? WHERE instance_id = ?",
                    (json.dumps(spec.as_json()), spec.instance_id),
                ).rowcount
                > 0
            )

    def forward_remove(self, instance_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM forwards WHERE instance_id = ?", (instance_id,))

    def forwards(self) -> list[tuple[TenantSpec, str, int]]:
        """The live forwards (expired ones are dropped as they are found)."""
        with self._db(write=False) as db:
            db.execute("DELETE FROM forwards WHERE until < ?", (time.time(),))
            rows = db.execute("SELECT spec, address, port FROM forwards").fetchall()
        return [(TenantSpec.of_json(json.loads(spec)), addr, port) for spec, addr, port in rows]

    # -- databases a tenant made ---------------------------------------------------

    def database_reserve(self, instance_id: str, name: str, limit: int) -> str | None:
        """Reserve `name` for the tenant's CREATE DATABASE; None if done (or done
        already), else why not: "limit", or "taken" (on this host)."""
        with self._db() as db:
            row = db.execute("SELECT instance_id FROM databases WHERE name = ?", (name,)).fetchone()
            if row is not None:
                return None if row[0] == instance_id else "taken"
            (made,) = db.execute(
                "SELECT count(*) FROM databases WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            if made + 1 >= limit:
                return "limit"
            db.execute(
                "INSERT INTO databases (name, instance_id, state) VALUES (?, ?, 'reserved')",
                (name, instance_id),
            )
        return None

    def database_activate(self, instance_id: str, name: str) -> bool:
        with self._db() as db:
            return (
                db.execute(
                    "UPDATE databases SET state = 'active' WHERE name = ? AND instance_id = ?",
                    (name, instance_id),
                ).rowcount
                > 0
            )

    def database_forget(self, instance_id: str, name: str, only_reserved: bool = False) -> bool:
        with self._db() as db:
            return (
                db.execute(
                    "DELETE FROM databases WHERE name = ? AND instance_id = ? "
                    "AND (NOT ? OR state = 'reserved')",
                    (name, instance_id, only_reserved),
                ).rowcount
                > 0
            )

    def database_owner(self, name: str) -> str | None:
        with self._db(write=False) as db:
            row = db.execute("SELECT instance_id FROM databases WHERE name = ?", (name,)).fetchone()
            return row[0] if row else None

    @staticmethod
    def _with_databases(db: sqlite3.Connection, instance_id: str, spec: str) -> TenantSpec:
        names = tuple(
            name
            for (name,) in db.execute(
                "SELECT name FROM databases WHERE instance_id = ? AND state = 'active' "
                "ORDER BY name",
                (instance_id,),
            )
        )
        return TenantSpec.of_json(json.loads(spec)).but(databases=names)
