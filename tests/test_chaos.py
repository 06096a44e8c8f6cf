"""Faults injected into the real platform while it works: a worker killed while
databases are created, Redis down, a queued message lost, the control plane
unreachable, a wake racing a delete. Each checks that every accepted request
finishes or fails cleanly (no 500, nothing stuck, nothing half-made) and that the
platform's own services come back by themselves. (A worker killed mid-backup:
tests/test_backups.py; a killed tenant server: tests/test_reconcile.py;
concurrent password resets: tests/test_api_databases.py.)"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import psycopg
import pytest
import redis
from django.conf import settings

from dbaas.env import services_dir
from dbaas.localservices import LocalRedis
from tenants.models import Backup, Tenant
from tests.conftest import Service, connect, wait_until, worker_service
from tests.helpers import create, kill_service, run_django, wait_for

pytestmark = pytest.mark.timeout(240)


def http(base: str, method: str, path: str, token: str | None = None, body=None):
    """(status, JSON answer) from the live server, as any HTTP client sees it."""
    request = urllib.request.Request(  # noqa: S310 - the test's own http server
        f"{base}/api/v1{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=90) as response:  # noqa: S310
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_a_worker_killed_while_databases_are_created_strands_none(
    live, alice, platform, live_server
):
    """Creates accepted while the worker dies are finished by its replacement: the
    sweep queues again what nobody is doing (the dead worker's messages would come
    back only after Redis's visibility timeout, an hour)."""
    answers: list[tuple[int, dict]] = []

    def create_one(name: str) -> None:
        answers.append(http(live_server.url, "POST", "/databases", alice.token, {"name": name}))

    threads = [threading.Thread(target=create_one, args=(f"burst{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    kill_service(platform, "worker")
    replacement = worker_service("worker", generation=2)
    platform["worker"] = replacement
    replacement.wait_for(lambda: replacement.log_contains(" ready."))
    for thread in threads:
        thread.join()
    assert len(answers) == 3 and all(status in (201, 202) for status, _ in answers), answers
    tenants = Tenant.objects.filter(account__user__email="alice@example.com")
    # Every accepted create ends running, and its string works.
    wait_until(lambda: all(t.state == "running" for t in tenants.all()), timeout=90)
    for _status, db in answers:
        with connect(db["connection_string"]) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == db["user"]
    assert tenants.count() == 3


def test_with_redis_down_requests_get_503_and_leave_nothing_half_made(live, alice, client):
    db = create(alice, "steady")
    local_redis = LocalRedis(services_dir())
    pid = int(local_redis.pidfile.read_text())
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not local_redis.is_running(), timeout=10)
    watcher = None
    try:
        # A create: refused, and no row left behind (nothing counts against the quota).
        started = time.monotonic()
        response = alice.call("POST", "/databases", {"name": "during"})
        assert response.status_code == 503, response.content
        assert "try again" in response.json()["error"]
        assert time.monotonic() - started < 15
        assert not Tenant.objects.filter(name="during").exists()
        # A backup: refused, no pending row that nobody will ever make.
        response = alice.call("POST", f"/databases/{db['id']}/backups")
        assert response.status_code == 503, response.content
        assert not Backup.objects.filter(tenant_id=db["id"]).exists()
        # A password change: refused, the old password still works.
        response = alice.call("POST", f"/databases/{db['id']}/password")
        assert response.status_code == 503, response.content
        assert Tenant.objects.get(pk=db["id"]).pending_scram_secret == ""
        with connect(db["connection_string"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # A sign-up needs Redis too (its rate limit): 503, JSON.
        response = client.post(
            "/api/v1/accounts",
            {"email": "late@example.com", "password": "a long passphrase"},
            content_type="application/json",
        )
        assert response.status_code == 503 and "error" in response.json()
        # What only reads the control plane goes on.
        assert alice.call("GET", "/databases").status_code == 200

        # The watcher `make run` runs brings it back within seconds.
        stopped_at = time.monotonic()
        watcher = Service("services-watch", [sys.executable, "-m", "dbaas.localservices", "watch"])
        watcher.wait_for(local_redis.is_running, timeout=30)
        back_after = time.monotonic() - stopped_at
        assert back_after < 5, back_after
    finally:
        if watcher is not None:
            watcher.stop()
        if not local_redis.is_running():
            local_redis.start()

    # The worker reconnects by itself: work is accepted and done again.
    def created() -> bool:
        status, _body = create_status(alice, "after")
        return status in (201, 202)

    wait_until(created, timeout=60)
    wait_until(lambda: Tenant.objects.get(name="after").state == "running", timeout=60)


def create_status(api, name: str) -> tuple[int, dict]:
    response = api.call("POST", "/databases", {"name": name})
    return response.status_code, response.json()


def test_a_backup_whose_message_was_lost_is_queued_again(live, alice, platform):
    """Redis lost a queued message (restarted without it, say): the sweep sees the
    backup pending, its queue empty and nobody on it, and queues it again."""
    db = create(alice, "forgotten")
    kill_service(platform, "bulk")
    try:
        response = alice.call("POST", f"/databases/{db['id']}/backups")
        assert response.status_code == 202
        backup_id = response.json()["id"]
        broker = redis.Redis.from_url(settings.REDIS_PY_URL)
        queue = f"host.{settings.DBAAS_HOST_NAME}.bulk"
        assert broker.llen(queue) == 1
        broker.delete(queue)  # the message is gone
    finally:
        replacement = worker_service("bulk", generation=3)
        platform["bulk"] = replacement
        replacement.wait_for(lambda: replacement.log_contains(" ready."))
    path = f"/databases/{db['id']}/backups/{backup_id}"
    assert wait_for(alice, path, ("done", "failed"), timeout=60)["state"] == "done"


def test_without_the_control_plane_the_api_answers_503_in_json(tmp_path):
    """A web process whose database cannot be reached (it is down, or restarting)."""
    probe = (
        "import json, django\n"
        "django.setup()\n"
        "from django.test import Client\n"
        "r = Client().get('/api/v1/databases', HTTP_AUTHORIZATION='Bearer dbaas_x')\n"
        "print(json.dumps([r.status_code, r.json(), r['Retry-After']]))\n"
    )
    nowhere = urllib.parse.quote(str(tmp_path), safe="")  # a socket directory nobody serves
    out = run_django(probe, {"DATABASE_URL": f"postgres://dbaas@{nowhere}/dbaas"})
    assert out.returncode == 0, out.stderr
    status, body, retry_after = json.loads(out.stdout.strip().splitlines()[-1])
    assert status == 503 and "unavailable" in body["error"] and retry_after


def test_a_wake_racing_a_delete_is_answered_at_once(live, alice, live_server):
    from tests.helpers import put_to_sleep

    db = create(alice, "racer")
    put_to_sleep(alice, db)
    answer: list[tuple[int, dict, float]] = []

    def wake() -> None:
        started = time.monotonic()
        status, body = http(live_server.url, "POST", f"/databases/{db['id']}/wake", alice.token)
        answer.append((status, body, time.monotonic() - started))

    thread = threading.Thread(target=wake)
    thread.start()
    assert alice.call("DELETE", f"/databases/{db['id']}").status_code == 202
    thread.join()
    status, body, took = answer[0]
    assert status in (200, 409), body
    assert took < 5, took
    if status == 409:
        assert "cannot be woken" in body["error"]


def test_a_sleeping_database_wakes_while_the_control_plane_is_unreachable(
    live, alice, platform, tmp_path
):
    """The host decides alone: the activator starts the instance as it was last
    started, and the wake is recorded once the control plane answers again."""
    from tests.helpers import put_to_sleep

    db = create(alice, "independent")
    with connect(db["connection_string"], autocommit=True) as conn:
        conn.execute("CREATE TABLE kept AS SELECT 'before the outage' AS v")
    put_to_sleep(alice, db)
    kill_service(platform, "activator")
    nowhere = urllib.parse.quote(str(tmp_path), safe="")  # a socket directory nobody serves
    cut_off = Service(
        "activator",
        [sys.executable, "manage.py", "run_activator"],
        env={"DATABASE_URL": f"postgres://dbaas@{nowhere}/dbaas"},
    )
    platform["activator"] = cut_off
    cut_off.wait_for(lambda: cut_off.log_contains("listening"))
    started = time.monotonic()
    with connect(db["connection_string"]) as conn:
        assert conn.execute("SELECT v FROM kept").fetchone() == ("before the outage",)
    assert time.monotonic() - started < 10
    # Back to an activator that could reach the control plane (it never does): the
    # wake it reported is on the row.
    cut_off.stop()
    activator = Service("activator", [sys.executable, "manage.py", "run_activator"])
    platform["activator"] = activator
    activator.wait_for(lambda: activator.log_contains("listening"))
    wait_until(lambda: Tenant.objects.get(pk=db["id"]).state == "running", timeout=30)


def _on_a_small_filesystem(runtime, iid: str, tmp_path, spare_mb: int) -> None:
    """Move the (stopped) instance's files onto a tmpfs of their own, with `spare_mb`
    free beyond what they take; undone by _off_the_small_filesystem."""
    instance_dir = runtime.instance_dir(iid)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", "--sparse=never", str(instance_dir), str(copy)], check=True)
    used_mb = int(
        subprocess.run(
            ["du", "-sm", str(copy)], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    )
    subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size={used_mb + spare_mb}m,mode=0711",
            "tmpfs",
            str(instance_dir),
        ],
        check=True,
    )
    subprocess.run(["cp", "-a", "--sparse=never", f"{copy}/.", str(instance_dir)], check=True)


def _off_the_small_filesystem(runtime, iid: str) -> None:
    from tenants.host import agent

    # Under the instance's lock, as the platform's own stops: the crash watch,
    # told of the exit at once, would otherwise start it again on the spot.
    with agent.instance_lock(iid):
        try:
            runtime.stop(iid)
        finally:  # a failed stop must not leave the tmpfs over the instance's files
            subprocess.run(["umount", "-l", str(runtime.instance_dir(iid))], check=False)


def test_a_sleeping_database_wakes_on_a_disk_someone_else_filled(live, alice, tmp_path):
    """Its server cannot even start on a full disk: the start gives it its reserve
    and tries again, so the client's connection still goes through."""
    from tenants.host import agent
    from tenants.models import Event
    from tests.helpers import put_to_sleep

    db = create(alice, "squeezed")
    tenant = Tenant.objects.get(pk=db["id"])
    runtime, iid = agent.runtime_for(tenant), tenant.instance_id
    put_to_sleep(alice, db)
    # Its files alone on a filesystem: reconcile sets that filesystem's reserve
    # aside (a share beside the instance) while it sleeps; then the disk fills.
    share = settings.DBAAS_DISK_RESERVE_MB << 20
    _on_a_small_filesystem(runtime, iid, tmp_path, spare_mb=24 + 2 * settings.DBAAS_DISK_RESERVE_MB)
    try:
        own = runtime.instance_dir(iid) / "reserve"
        wait_until(lambda: own.exists() and own.stat().st_size == share, timeout=20)
        assert runtime.reserve_file(iid) == own
        filler = runtime.instance_dir(iid) / "someone-elses-file"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
        disk = os.statvfs(runtime.instance_dir(iid))
        assert disk.f_bavail * disk.f_frsize < 1 << 20  # full
        with connect(db["connection_string"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # What the host reports comes a moment later: the note, then the event.
        wait_until(
            lambda: Tenant.objects.get(pk=db["id"]).state_reason.startswith("the disk is full"), 10
        )
        wait_until(Event.objects.filter(tenant_id=db["id"], action="disk_full").exists, 10)
    finally:
        _off_the_small_filesystem(runtime, iid)


def test_a_full_disk_is_noticed_and_the_owner_can_free_space(live, alice, tmp_path):
    """The tenant's files on a small filesystem of their own, filled by its owner:
    the crash watch reads `No space left on device` in its server's log, gives the
    instance its reserve back and says so; the owner connects, drops data, and
    writes work again."""
    from tenants.host import agent
    from tenants.models import Event
    from tests.helpers import put_to_sleep

    db = create(alice, "hoarder")
    tenant = Tenant.objects.get(pk=db["id"])
    runtime = agent.runtime_for(tenant)
    iid = tenant.instance_id
    # On the host's instances filesystem: a share of its one shared reserve, no
    # reserve of its own (32 MB beside each sleeping database would be most of
    # its disk).
    share = settings.DBAAS_DISK_RESERVE_MB << 20
    shared = runtime.reserve_file(iid)
    assert shared == runtime.instances_dir / ".reserve"
    assert shared.stat().st_size == runtime.SHARED_RESERVES * share
    assert not (runtime.instance_dir(iid) / "reserve").exists()
    put_to_sleep(alice, db)
    # Some data, then full. Alone on a filesystem, it gets a reserve there as it starts.
    _on_a_small_filesystem(runtime, iid, tmp_path, spare_mb=48 + settings.DBAAS_DISK_RESERVE_MB)
    try:
        filling = connect(db["connection_string"], autocommit=True)
        assert runtime.reserve_file(iid).stat().st_size == share
        with pytest.raises(
            psycopg.Error, match="No space left on device|free disk space|terminat|closed"
        ):
            filling.execute("CREATE TABLE filler (g int, h text)")
            for _ in range(100):
                filling.execute(
                    "INSERT INTO filler SELECT g, md5(g::text) || md5(random()::text)"
                    " FROM generate_series(1, 100000) g"
                )
        filling.close()
        noted = wait_until(lambda: Tenant.objects.get(pk=db["id"]).state_reason, timeout=20)
        assert noted.startswith("the disk is full"), noted
        # The note and the event are two reports: the event may come a moment later.
        disk_full = Event.objects.filter(tenant_id=db["id"], action="disk_full")
        wait_until(disk_full.exists, timeout=10)
        assert (
            "the disk is full" in alice.call("GET", f"/databases/{db['id']}").json()["state_reason"]
        )
        assert not runtime.reserve_file(iid).exists()  # given back

        def freed() -> bool:
            try:
                with connect(db["connection_string"], autocommit=True) as conn:
                    conn.execute("DROP TABLE IF EXISTS filler")
                return True
            except psycopg.OperationalError:
                return False  # restarting after a PANIC: try again

        wait_until(freed, timeout=60)
        with connect(db["connection_string"], autocommit=True) as conn:
            conn.execute("CREATE TABLE after_cleanup AS SELECT g FROM generate_series(1, 1000) g")
            assert conn.execute("SELECT count(*) FROM after_cleanup").fetchone() == (1000,)
    finally:
        _off_the_small_filesystem(runtime, iid)


def test_a_worker_killed_mid_restore_leaves_the_data_as_it_was(live, alice, platform):
    """The restore's lock dies with its worker: the sweep fails the restore, puts
    back whatever it had replaced, and the database runs with its current data."""
    from tests.helpers import back_up

    db = create(alice, "rollback")
    with connect(db["connection_string"], autocommit=True) as conn:  # a restore that takes a while
        conn.execute(
            "CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 1500000) g"
        )
    backup = back_up(alice, db)
    with connect(db["connection_string"], autocommit=True) as conn:
        conn.execute("CREATE TABLE after_backup AS SELECT 'current' AS v")
    response = alice.call("POST", f"/databases/{db['id']}/backups/{backup['id']}/restore")
    assert response.status_code == 202
    restore_id = response.json()["id"]
    from tenants.models import Restore

    wait_until(lambda: Restore.objects.get(pk=restore_id).state == "running", timeout=30)
    time.sleep(0.3)  # unpacking
    kill_service(platform, "bulk")
    try:
        _restore_was_abandoned(db, restore_id)
    finally:  # the tests after this one need a bulk worker, whatever happened here
        replacement = worker_service("bulk", generation=4)
        platform["bulk"] = replacement
        replacement.wait_for(lambda: replacement.log_contains(" ready."))


def _restore_was_abandoned(db: dict, restore_id: int) -> None:
    from tenants.host import agent
    from tenants.models import Restore

    wait_until(lambda: Restore.objects.get(pk=restore_id).state != "running", timeout=30)
    restore = Restore.objects.get(pk=restore_id)
    assert restore.state == "failed" and "worker" in restore.error, restore.error

    # The data from before the restore, served again.
    def current() -> bool:
        try:
            with connect(db["connection_string"]) as conn:
                return conn.execute("SELECT v FROM after_backup").fetchone() == ("current",)
        except psycopg.OperationalError:
            return False

    wait_until(current, timeout=30)
    tenant = Tenant.objects.get(pk=db["id"])
    instance_dir = agent.runtime_for(tenant).instance_dir(tenant.instance_id)
    # What it unpacked goes (by the next sweep at the latest); nothing was kept aside.
    wait_until(lambda: not list(instance_dir.glob("data.*")), timeout=15)
