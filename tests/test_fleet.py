"""Several hosts behind one control plane, on this machine: besides the session's
own host, two more, each in a network namespace of its own (dbaas/netns.py) and
started with `manage.py run_host`, as an operator starts a host on another machine.
Databases spread over the three, each reached at its host's address; a host that
stops is shown down, and its databases serve again when it is back."""

import hashlib
import io
import os
import shutil
import sys
import threading
import time

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command

from dbaas import netns
from tenants import backups, host_identity, lifecycle
from tenants.models import Backup, Event, Host, Move, Plan, Tenant
from tests.conftest import Service, connect, wait_until
from tests.helpers import back_up, create, descendants, kill_tree, restore, wait_for

pytestmark = pytest.mark.timeout(300)

# Namespaces, bridge and addresses of their own (make run's fleet uses slot 0).
SLOT = 100 + int(os.environ.get("DBAAS_TEST_SLOT", "0") or 0)


class FleetHost:
    """One more host: its namespace, and `run_host` running in it."""

    def __init__(self, local: netns.LocalHost) -> None:
        self.local = local
        self.name = local.name
        self.data_dir = settings.DATA_DIR / "fleet" / local.name
        self.service: Service | None = None

    def forget(self) -> None:
        """What the host held from an earlier session (whose database is gone), and
        its certificate (asked for anew, as a new host does)."""
        for path in self.data_dir.glob("host.sqlite3*"):
            path.unlink()
        shutil.rmtree(self.data_dir / "pki", ignore_errors=True)
        for name in ("server.crt", "server.key", "ca.crt"):
            (self.data_dir / "pgbouncer" / name).unlink(missing_ok=True)

    def start(self, generation: int = 1) -> None:
        # Its token where run_host looks for it (as `make run` puts it).
        host_identity.install_local(self.name, self.data_dir)
        command = [*self.local.enter(), sys.executable, "manage.py", "run_host"]
        env = self.local.environment(self.data_dir)
        self.service = Service(f"{self.name}-{generation}", command, env=env)
        self.service.wait_for(self.ready, timeout=180)

    def ready(self) -> bool:
        assert self.service is not None
        log = self.service.log_path.read_text()
        return (
            log.count(" ready.") >= 2
            and "run_activator: listening" in log
            and "run_exports: serving" in log
        )

    def kill(self) -> None:
        """Everything of the host at once (agent, pooler, activator, the instances its
        agent started), as when the machine stops."""
        assert self.service is not None
        kill_tree(self.service.proc.pid)
        self.service.proc.wait()

    def register(self) -> Host:
        """Its row, as run_host wrote it (each test starts from an empty database)."""
        return lifecycle.host_register(
            name=self.name,
            public_host=self.local.address,
            pooler_port=settings.DBAAS_PGBOUNCER_PORT,
            pooler_shards=settings.DBAAS_POOLER_SHARDS,
        )

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
        from unikernel_images.runtimes import get_runtime

        instances = self.data_dir / "instances"
        if instances.exists():
            runtime = get_runtime("sandbox", instances)
            for entry in instances.iterdir():
                runtime.destroy(entry.name)


@pytest.fixture(scope="module")
def fleet(platform, django_db_blocker):
    names = [f"{settings.DBAAS_HOST_NAME}-f{n}" for n in (2, 3)]
    hosts = [FleetHost(local) for local in netns.fleet_up(names, slot=SLOT)]
    try:
        for host in hosts:
            host.forget()
            with django_db_blocker.unblock():  # their tokens, and rows to register
                host.start()
        yield hosts
    finally:
        for host in hosts:
            host.stop()
        netns.fleet_down(SLOT)


def test_databases_spread_over_three_hosts_each_reached_at_its_address(live, alice, fleet):
    for host in fleet:
        host.register()
    made = [create(alice, f"spread{n}") for n in range(3)]
    # The host with the most room takes each new one: one each.
    assert sorted(db["host"] for db in made) == sorted(
        [settings.DBAAS_PUBLIC_HOST] + [h.local.address for h in fleet]
    )
    for db in made:
        assert f"@{db['host']}:" in db["connection_string"]
        with connect(db["connection_string"]) as conn:
            conn.execute("CREATE TABLE t AS SELECT 1 AS x")
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    # Each instance lives on its host's disk.
    for host in fleet:
        tenant = Tenant.objects.get(host__name=host.name)
        assert (host.data_dir / "instances" / tenant.instance_id).is_dir()
        assert not (settings.DATA_DIR / "instances" / tenant.instance_id).exists()


def test_a_host_that_stops_is_down_and_serves_again_when_back(live, alice, fleet):
    target = fleet[0]
    for host in fleet:
        host.register()
    create(alice, "here")  # the session's own host (first by name)
    db = create(alice, "there")
    assert db["host"] == target.local.address
    with connect(db["connection_string"]) as conn:
        conn.execute("CREATE TABLE kept AS SELECT 42 AS answer")
    wait_until(lambda: Host.objects.get(name=target.name).health, timeout=30)  # a heartbeat
    target.kill()
    stopped = time.monotonic()
    try:
        wait_until(lambda: Host.objects.get(name=target.name).down_since is not None, timeout=60)
        noticed = time.monotonic() - stopped
        limit = settings.DBAAS_HOST_DOWN_AFTER + 2 * settings.DBAAS_HEARTBEAT_INTERVAL + 2
        assert noticed < limit, noticed
        shown = alice.call("GET", f"/databases/{db['id']}").json()
        assert shown["available"] is False and target.name in shown["state_reason"]
        # The other hosts are not affected.
        assert all(h.down_since is None for h in Host.objects.exclude(name=target.name))
    finally:
        target.start(generation=2)
    wait_until(lambda: Host.objects.get(name=target.name).down_since is None, timeout=60)
    assert Event.objects.filter(host__name=target.name, action="host_up").exists()
    with connect(db["connection_string"]) as conn:
        assert conn.execute("SELECT answer FROM kept").fetchone() == (42,)
    assert alice.call("GET", f"/databases/{db['id']}").json()["available"] is True


def test_an_export_on_another_host_downloads_and_expiry_deletes_there(live, alice, fleet):
    """Backups kept on the hosts' own disks: an export is served by its host to the
    web server (signed URL, TLS), and expiry deletes the files on that host."""
    target = fleet[1]
    for host in fleet:
        host.register()
    create(alice, "first")  # the session's own host, then the fleet's in name order
    create(alice, "second")
    db = create(alice, "third")
    assert db["host"] == target.local.address
    with connect(db["connection_string"]) as conn:
        conn.execute("CREATE TABLE exported AS SELECT 7 AS n")
    export = alice.call("POST", f"/databases/{db['id']}/backups", {"kind": "logical"}).json()
    done = wait_for(alice, f"/databases/{db['id']}/backups/{export['id']}", ("done", "failed"))
    assert done["state"] == "done", done
    row = Backup.objects.get(pk=export["id"])
    on_target = target.data_dir / "backups" / row.location
    assert on_target.exists()
    assert not (settings.DATA_DIR / "backups" / row.location).exists()
    download = alice.client.get(
        f"/api/v1/databases/{db['id']}/backups/{export['id']}/download",
        HTTP_AUTHORIZATION=f"Bearer {alice.token}",
    )
    assert download.status_code == 200
    body = b"".join(download.streaming_content)
    assert hashlib.sha256(body).hexdigest() == done["sha256"]
    # Retention: the file goes from the host that has it.
    Plan.objects.filter(name="free").update(backups_kept=0)
    assert backups.backups_expire() == 1
    wait_until(lambda: not on_target.exists(), timeout=30)


def test_a_host_serves_only_urls_the_control_plane_signed(live, fleet):
    import ssl
    import urllib.error
    import urllib.request

    from dbaas.env import pki_dir
    from tenants.host import exports, identity

    target, other = fleet
    location = "nobody/1-x.dump"
    context = ssl.create_default_context(cafile=str(pki_dir() / "ca.crt"))
    base = f"https://{target.local.address}:{settings.DBAAS_EXPORTS_PORT}"
    key = identity.exports_key(host_identity.issue(target.name).key)
    good = exports.signed_path(key, location)
    # Another host's key signs nothing here: a host cannot reach another's exports.
    others = identity.exports_key(host_identity.issue(other.name).key)
    for path, status in [
        (good, 404),  # signed, but no such file: nothing else is said
        (good.replace("sig=", "sig=0"), 403),
        (exports.signed_path(b"another key", location), 403),
        (exports.signed_path(others, location), 403),
        (exports.signed_path(key, location, now=time.time() - 3600), 403),
        (exports.signed_path(key, "../../pki/ca.key"), 404),
        ("/exports/x", 403),
    ]:
        try:
            urllib.request.urlopen(base + path, timeout=10, context=context)  # noqa: S310
            raise AssertionError(f"{path} was served")
        except urllib.error.HTTPError as exc:
            assert exc.code == status, (path, exc.code)


def test_draining_a_host_moves_its_databases_and_their_old_strings_keep_working(live, alice, fleet):
    """A running and a sleeping database move off a host: data, backups and the
    connection strings their owners have stay; the sleeping one is not started;
    the running one's clients wait a few seconds, and none is refused."""
    source, target = fleet
    for host in fleet:
        host.register()
    # Both on the host to drain; then only the other fleet host takes databases
    # (the session's own host is on this machine's loopback, which the fleet's
    # namespaces do not reach).
    Host.objects.exclude(name=source.name).update(accepting=False)
    awake, asleep = create(alice, "awake"), create(alice, "asleep")
    Host.objects.filter(name=target.name).update(accepting=True)
    assert awake["host"] == asleep["host"] == source.local.address
    for db in (awake, asleep):
        with connect(db["connection_string"], autocommit=True) as conn:
            conn.execute(f"CREATE TABLE kept AS SELECT '{db['name']}' AS v")
    backup = back_up(alice, asleep)
    slept = alice.call("POST", f"/databases/{asleep['id']}/sleep")
    assert slept.status_code == 200 and slept.json()["state"] == "sleeping", slept.content
    held = connect(awake["connection_string"], autocommit=True)
    held.execute("SELECT 1")

    # A client of the running one connects and queries all through the drain.
    failures: list[Exception] = []
    slowest = [0.0]
    stop = threading.Event()

    def keep_connecting() -> None:
        while not stop.is_set():
            began = time.monotonic()
            try:
                with connect(awake["connection_string"]) as conn:
                    assert conn.execute("SELECT v FROM kept").fetchone() == ("awake",)
            except Exception as exc:  # asserted below
                failures.append(exc)
            slowest[0] = max(slowest[0], time.monotonic() - began)
            time.sleep(0.05)

    client = threading.Thread(target=keep_connecting)
    client.start()
    out = io.StringIO()
    try:
        call_command("drain_host", source.name, stdout=out)
    finally:
        stop.set()
        client.join(60)
    print(out.getvalue(), f"slowest connect+query during the drain: {slowest[0]:.2f} s")
    assert "2 moved, 0 not moved, 0 left" in out.getvalue(), out.getvalue()
    assert not failures, failures
    assert slowest[0] < 5, slowest[0]
    # The connection that was open when it moved was closed (its server moved).
    with pytest.raises(psycopg.OperationalError):
        held.execute("SELECT 1")
    held.close()

    moves = {m.tenant.name: m for m in Move.objects.select_related("tenant")}
    assert {m.state for m in moves.values()} == {"done"}
    assert moves["awake"].pause_ms is not None and moves["awake"].pause_ms < 5000
    assert not Host.objects.get(name=source.name).accepting
    for db, state in ((awake, "running"), (asleep, "sleeping")):
        shown = alice.call("GET", f"/databases/{db['id']}").json()
        assert shown["state"] == state and shown["host"] == target.local.address
        assert "the connection string you had works until" in shown["state_reason"]
        tenant = Tenant.objects.get(pk=db["id"])
        assert not (source.data_dir / "instances" / tenant.instance_id).exists()
        assert (target.data_dir / "instances" / tenant.instance_id).is_dir()
    # Moved asleep: never started on the way (no wake), and not running now.
    sleeper = Tenant.objects.get(pk=asleep["id"])
    assert not Event.objects.filter(tenant=sleeper, action="wake").exists()
    assert sleeper.wake_count == 0
    # Its backup moved with it, byte for byte.
    location = Backup.objects.get(pk=backup["id"]).location
    assert not (source.data_dir / "backups" / location).exists()
    stored = (target.data_dir / "backups" / location).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == backup["sha256"]
    # The strings the owners had (the old host's address) still work, through the
    # old host's pooler: the sleeping one wakes on its new host for it.
    for db in (awake, asleep):
        with connect(db["connection_string"]) as conn:
            assert conn.execute("SELECT v FROM kept").fetchone() == (db["name"],)
        moved = f"@{target.local.address}:"
        with connect(db["connection_string"].replace(f"@{source.local.address}:", moved)) as conn:
            assert conn.execute("SELECT v FROM kept").fetchone() == (db["name"],)
    wait_until(lambda: Tenant.objects.get(pk=asleep["id"]).state == "running", timeout=10)
    # A new password works through the old string too (the old host's forward has it).
    reset = alice.call("POST", f"/databases/{awake['id']}/password")
    assert reset.status_code == 200, reset.content
    new_string = reset.json()["connection_string"]
    assert f"@{target.local.address}:" in new_string
    old_string = new_string.replace(f"@{target.local.address}:", f"@{source.local.address}:")

    def old_string_works() -> bool:
        try:
            with connect(old_string) as conn:
                return conn.execute("SELECT v FROM kept").fetchone() == ("awake",)
        except psycopg.OperationalError:
            return False

    wait_until(old_string_works, timeout=15)


def _environment(pid: int) -> dict[str, str]:
    try:
        raw = open(f"/proc/{pid}/environ", "rb").read()  # noqa: SIM115 - read at once
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(): value.decode(errors="replace") for key, value in pairs}


def test_a_host_does_all_its_work_without_the_control_planes_database(live, alice, fleet):
    """run_host gives its processes no control-plane database (any query would
    raise): they work from what the host holds and report by task name. Everything
    a database goes through works on such a host."""
    host = fleet[0]
    for each in fleet:
        each.register()
    assert host.service is not None
    processes = [_environment(pid) for pid in descendants(host.service.proc.pid)]
    agents = [env for env in processes if env.get("DBAAS_HOST_NAME") == host.name]
    assert len(agents) >= 5, processes  # workers, pooler, activator, exports (and honcho)
    for env in agents:
        assert env.get("DBAAS_HOST_ONLY") == "1" and "DATABASE_URL" not in env
    # Nor the platform's CA: its pooler's certificate is the one the control plane
    # signed for its request, for the address it registered.
    from dbaas.env import pki_dir
    from poolers import tls

    pki = host.data_dir / "pki"
    assert not (pki / "ca.key").exists() and "DBAAS_PKI_DIR" not in agents[0]
    assert (pki / "ca.crt").read_bytes() == (pki_dir() / "ca.crt").read_bytes()
    served = host.data_dir / "pgbouncer" / "server.crt"
    assert tls.certificate_fits(served, pki_dir() / "ca.crt", host.local.address)

    Host.objects.exclude(name=host.name).update(accepting=False)
    db = create(alice, "hostonly")
    assert db["host"] == host.local.address
    with connect(db["connection_string"], autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT 1 AS v")
        conn.execute("CREATE DATABASE made_here")  # the registrar, from the host's store
    with connect(db["connection_string"].replace(f"/{db['database']}?", "/made_here?")) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("made_here",)
    backup = back_up(alice, db)
    slept = alice.call("POST", f"/databases/{db['id']}/sleep")
    assert slept.status_code == 200 and slept.json()["state"] == "sleeping", slept.content
    with connect(db["connection_string"]) as conn:  # woken by the host's activator
        assert conn.execute("SELECT v FROM t").fetchone() == (1,)
    wait_until(lambda: Tenant.objects.get(pk=db["id"]).wake_count == 1, timeout=10)
    with connect(db["connection_string"], autocommit=True) as conn:
        conn.execute("DELETE FROM t")
    restored = restore(alice, db, backup)
    assert restored["state"] == "done", restored
    with connect(db["connection_string"]) as conn:
        assert conn.execute("SELECT v FROM t").fetchone() == (1,)
    reset = alice.call("POST", f"/databases/{db['id']}/password")
    assert reset.status_code == 200, reset.content
    with connect(reset.json()["connection_string"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert alice.call("DELETE", f"/databases/{db['id']}").status_code == 202
    wait_until(lambda: Tenant.objects.get(pk=db["id"]).state == "deleted", timeout=30)
    tenant = Tenant.objects.get(pk=db["id"])
    assert not (host.data_dir / "instances" / tenant.instance_id).exists()
