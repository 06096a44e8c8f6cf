"""A host's tenants are spread over several PgBouncers (DBAAS_POOLER_SHARDS), each on
a port of its own (tenant pk modulo the shards): a change to one tenant rewrites and
reloads only its own PgBouncer, whose RELOAD stalls only its clients; one that dies
is started again while the others go on serving; none outlives run_pooler."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tenants.host import agent
from tests.conftest import connect, wait_until
from tests.helpers import create_on_shard, descendants

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(settings.DBAAS_POOLER_SHARDS < 2, reason="one PgBouncer per host"),
]


def _reloads(shard: int) -> int:
    log = agent.pooler(shard).log_file
    return log.read_text().count("RELOAD command issued") if log.exists() else 0


def _files(shard: int) -> dict[str, int]:
    bouncer = agent.pooler(shard)
    return {
        p.name: p.stat().st_mtime_ns for p in (bouncer.ini, bouncer.auth_file, bouncer.hba_file)
    }


def test_a_change_reloads_only_the_pgbouncer_of_its_database(live, alice, bob):
    mine = create_on_shard(alice, "mine", 0)
    theirs = create_on_shard(bob, "theirs", 1)
    base = settings.DBAAS_PGBOUNCER_PORT
    assert (mine["port"], theirs["port"]) == (base, base + 1)
    assert f":{base}/" in mine["connection_string"]
    assert f":{base + 1}/" in theirs["connection_string"]
    # Each PgBouncer knows its own tenants' names and users, not the other's.
    first, second = agent.pooler(0), agent.pooler(1)
    assert mine["database"] in first.database_names()
    assert mine["database"] not in second.database_names()
    assert theirs["database"] in second.database_names()
    assert theirs["user"] not in first.auth_file.read_text()

    with connect(theirs["connection_string"], autocommit=True) as neighbour:
        files, reloads = _files(1), _reloads(1)
        mine_reloads = _reloads(0)
        response = alice.call("POST", f"/databases/{mine['id']}/password")
        assert response.status_code == 200, response.content
        mine = mine | response.json()
        with connect(mine["connection_string"]) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (mine["user"],)
        assert _reloads(0) > mine_reloads
        assert (_files(1), _reloads(1)) == (files, reloads)  # not even rewritten
        assert neighbour.execute("SELECT 1").fetchone() == (1,)


def test_a_pgbouncer_that_dies_is_started_again_and_the_others_serve_meanwhile(
    platform, live, alice, bob
):
    steady = create_on_shard(alice, "steady", 0)
    shaky = create_on_shard(bob, "shaky", 1)
    ini = str(agent.pooler(1).ini)
    (victim,) = [
        pid
        for pid in descendants(platform["pooler"].proc.pid)
        if ini.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    with connect(steady["connection_string"], autocommit=True) as conn:
        os.kill(victim, signal.SIGKILL)
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with connect(steady["pooled_connection_string"]) as other:
            assert other.execute("SELECT 1").fetchone() == (1,)
    wait_until(lambda: agent.pooler(1).is_up(), timeout=15)
    with connect(shaky["connection_string"]) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (shaky["user"],)
    assert "starting it again" in platform["pooler"].log_path.read_text()


def test_a_pgbouncer_ends_with_the_process_that_started_it():
    """run_pooler's children get SIGTERM when it ends, even by SIGKILL: one left
    behind would hold its port with files nobody renders any more."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time\n"
            "from poolers.pgbouncer import _dies_with\n"
            "child = subprocess.Popen(['sleep', '60'], preexec_fn=_dies_with(os.getpid()))\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=settings.BASE_DIR,
    )
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()

    def ended() -> bool:
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except FileNotFoundError:
            return True
        return stat.rsplit(")", 1)[1].split()[0] == "Z"  # ended, not yet reaped

    wait_until(ended, timeout=5)
