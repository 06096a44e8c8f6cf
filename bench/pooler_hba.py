#!/usr/bin/env python3
"""What naming every database in PgBouncer's hba file costs (the CVE-2026-107350
mitigation, docs/security.md), at many tenants per host.

Runs its own PgBouncer (the one the platform chose, or --pgbouncer) on a scratch
directory with N tenants' users, database entries and hba rules rendered from the
platform's own templates, no tenant servers needed, and measures side by side:

- the time from a StartupMessage to PgBouncer's first answer (AuthenticationSASL),
  which is where PgBouncer evaluates its hba rules, for the tenant whose rules come
  last: `auth_type = hba` (the mitigation) against `auth_type = scram-sha-256`;
- the time of a RELOAD with each, and the longest a client's query waited during it
  (PgBouncer does nothing else while it reloads).

As root: .venv/bin/python bench/pooler_hba.py [--tenants 100,1000,10000] [--logins 300]
"""

import argparse
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE))

from dbaas.env import pgbouncer_binary  # noqa: E402
from poolers import tls  # noqa: E402
from poolers.pgbouncer import DatabaseEntry, Owner, PgBouncer, UserEntry  # noqa: E402
from poolers.scram import scram_secret  # noqa: E402
from tests import pgwire  # noqa: E402 - the hand-made protocol client of the tests

PORT = 6499


def configure(root: Path, n: int, binary: str, user: str) -> PgBouncer:
    bouncer = PgBouncer(root, "127.0.0.1", PORT, service_user=user, binary=binary)
    tls.ensure_ca(bouncer.pki)  # a CA of the bench's own signs the pooler's certificate
    bouncer.prepare(public_host="127.0.0.1")
    secret = scram_secret("bench-password")  # one secret: hashing 10k is not the point
    users = [UserEntry(f"tenant_{i:06d}", secret) for i in range(n)]
    owners = [
        Owner(
            u,
            tuple(
                DatabaseEntry(
                    name=alias,
                    dbname=u.name,
                    socket_dir=root / "nowhere",
                    pool_size=10,
                    max_connections=20,
                    owner=u.name,
                    pool_mode=mode,
                )
                for alias, mode in ((u.name, None), (f"{u.name}_pooled", "transaction"))
            ),
        )
        for u in users
    ]
    bouncer.write_config([], owners)
    return bouncer


def set_auth_type(bouncer: PgBouncer, auth_type: str) -> None:
    text = bouncer.ini.read_text()
    lines = [
        f"auth_type = {auth_type}" if line.startswith("auth_type =") else line
        for line in text.splitlines()
    ]
    bouncer.ini.write_text("\n".join(lines) + "\n")


def first_answer_ms(user: str, database: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        conn = pgwire.Connection("127.0.0.1", PORT)
        try:
            started = time.perf_counter()
            conn.send(pgwire.startup(user, database))
            code, _ = conn.read_auth()
            times.append((time.perf_counter() - started) * 1000)
            assert code == pgwire.AUTH_SASL, code
        finally:
            conn.close()
    return times


def reload_ms(bouncer: PgBouncer, count: int = 5) -> tuple[float, float]:
    """The median RELOAD, and the longest a client's query (an admin console
    `SHOW VERSION` in a loop on a connection of its own) waited meanwhile."""
    conn = bouncer.admin_connect()
    conn.autocommit = True
    worst, stop = [0.0], threading.Event()

    def query_in_a_loop() -> None:
        while not stop.is_set():
            began = time.perf_counter()
            conn.execute("SHOW VERSION").fetchall()
            worst[0] = max(worst[0], (time.perf_counter() - began) * 1000)
            time.sleep(0.001)

    client = threading.Thread(target=query_in_a_loop)
    client.start()
    times = []
    try:
        time.sleep(0.2)
        worst[0] = 0.0
        for _ in range(count):
            started = time.perf_counter()
            bouncer.reload()
            times.append((time.perf_counter() - started) * 1000)
            time.sleep(0.1)
    finally:
        stop.set()
        client.join()
        conn.close()
    return statistics.median(times), worst[0]


def run(n: int, logins: int, binary: str, user: str) -> list[tuple]:
    root = Path(tempfile.mkdtemp(prefix="bench-hba-"))
    os.chmod(root, 0o755)
    rows = []
    proc = None
    try:
        bouncer = configure(root / "pgbouncer", n, binary, user)
        pw = pwd.getpwnam(user)
        for path in root.rglob("*"):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        os.chown(root, pw.pw_uid, pw.pw_gid)
        last = f"tenant_{n - 1:06d}"
        for auth_type in ("scram-sha-256", "hba"):
            set_auth_type(bouncer, auth_type)
            proc = subprocess.Popen(
                ["runuser", "-u", user, "--", binary, str(bouncer.ini)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 30
            while not bouncer.is_up():
                assert time.monotonic() < deadline, "pgbouncer did not start"
                time.sleep(0.05)
            first_answer_ms(last, last, 20)  # warm up
            times = first_answer_ms(last, last, logins)
            rows.append(
                (
                    n,
                    auth_type,
                    statistics.median(times),
                    sorted(times)[int(len(times) * 0.95)],
                    *reload_ms(bouncer),
                )
            )
            proc.send_signal(signal.SIGINT)  # SIGTERM would wait for its admin session
            proc.wait(timeout=10)
            proc = None
    finally:
        if proc is not None:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", default="100,1000,10000")
    parser.add_argument("--logins", type=int, default=300)
    parser.add_argument("--pgbouncer", default=pgbouncer_binary())
    parser.add_argument("--user", default="dbaas-pooler", help="the account PgBouncer runs as")
    args = parser.parse_args()
    version = subprocess.run(
        [args.pgbouncer, "--version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    print(f"{version}; {args.logins} logins per row, the tenant whose rules come last")
    print(
        f"{'tenants':>8} {'auth_type':>14} {'first answer p50 ms':>20} {'p95 ms':>8} "
        f"{'RELOAD ms':>10} {'stall ms':>9}"
    )
    for n in (int(x) for x in args.tenants.split(",")):
        for row in run(n, args.logins, args.pgbouncer, args.user):
            print(
                f"{row[0]:>8} {row[1]:>14} {row[2]:>20.3f} {row[3]:>8.3f} {row[4]:>10.1f} "
                f"{row[5]:>9.1f}"
            )


if __name__ == "__main__":
    main()
