"""The microvm runtime: a plan whose databases are each a QEMU microVM, through the
API, PgBouncer with TLS, sleep and wake on connect, backups of a sleeping tenant,
restore and delete; and what a guest can see. Under TCG emulation wherever KVM does
not boot a guest (these machines: a nested PVM hypervisor), as `auto` decides."""

import os
import secrets
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from tenants.host import agent
from tenants.models import Account, Event, Plan, Tenant
from tests.conftest import connect
from tests.helpers import (
    back_up,
    create,
    instance_state,
    measure,
    processes_of_uid,
    put_to_sleep,
    restore,
    wait_for_state,
)
from unikernel_images import guest, postgres_admin
from unikernel_images.paths import images_dir
from unikernel_images.runtimes.base import InstanceState

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not (images_dir() / "guest").exists() and not guest.GUEST_KERNEL_DIR.exists(),
        reason="no guest kernel (scripts/guest-kernel.sh)",
    ),
]


@pytest.fixture
def vm_plan(live, alice):
    """Alice's databases are microVMs (and may sleep)."""
    plan = Plan.objects.create(
        name="vm", runtime="microvm", memory_limit_mb=256, sleeps_when_idle=True
    )
    Account.objects.filter(user__email="alice@example.com").update(plan=plan)
    return plan


def uid_of(db: dict) -> int:
    return settings.DBAAS_TENANT_UID_BASE + db["id"]


def qemu_of(db: dict) -> list[int]:
    """The QEMU processes of the database's uid."""
    return [
        pid
        for pid in processes_of_uid(uid_of(db))
        if Path(f"/proc/{pid}/comm").read_text().strip().startswith("qemu-system")
    ]


def connect_waiting(db: dict) -> psycopg.Connection:
    """A connection that may wait for a microVM's boot (seconds, under emulation)."""
    return psycopg.connect(db["connection_string"], connect_timeout=60)


def notes(db: dict) -> list[str]:
    with connect_waiting(db) as conn:
        return [row[0] for row in conn.execute("SELECT body FROM notes ORDER BY body")]


def test_a_microvm_database_serves_sleeps_and_wakes_on_connect(vm_plan, alice, client):
    db = create(alice, "vm")
    tenant = Tenant.objects.get(pk=db["id"])
    assert tenant.runtime == "microvm"
    assert len(qemu_of(db)) == 1
    staff = get_user_model().objects.create_superuser("ops", "ops@example.com", "ops password 1")
    client.force_login(staff)
    listing = client.get("/admin/tenants/tenant/?runtime=microvm").content.decode()
    assert db["database"] in listing and "microvm" in listing
    with connect(db["connection_string"]) as conn:
        assert conn.pgconn.ssl_in_use  # client to PgBouncer
        conn.execute("CREATE TABLE notes (body text)")
        conn.execute("INSERT INTO notes VALUES ('before the nap')")
        # The server is the guest's: its own kernel, reached over its network.
        assert conn.execute("SELECT inet_server_addr()").fetchone()[0] is not None

    put_to_sleep(alice, db)
    assert processes_of_uid(uid_of(db)) == []
    assert notes(db) == ["before the nap"]  # the connection is held through the boot
    wait_for_state(db["id"], "running", timeout=10)
    assert instance_state(db["id"]) is InstanceState.RUNNING
    assert Event.objects.filter(tenant_id=db["id"], action="wake").exists()

    # The password changes in the guest's server and in the pooler.
    response = alice.call("POST", f"/databases/{db['id']}/password")
    assert response.status_code == 200, response.content
    assert notes(response.json()) == ["before the nap"]
    with pytest.raises(psycopg.OperationalError):
        connect(db["connection_string"])


def test_a_database_the_owner_creates_in_a_microvm_is_reachable(vm_plan, alice):
    """CREATE DATABASE asks the host's registrar, which the guest reaches only
    through QEMU's forward to its own instance's registrar socket (Django's test
    runner and Prisma's shadow database need it)."""
    db = create(alice, "vm")
    made = f"made_{secrets.token_hex(4)}"
    url = db["connection_string"].replace(f"/{db['database']}?", f"/{made}?")
    with connect(db["connection_string"], autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {made}")
    with connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (made,)
    with connect(db["connection_string"], autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {made}")
    with pytest.raises(psycopg.OperationalError):
        connect(url)


def test_a_killed_microvm_is_booted_again_with_its_data(vm_plan, alice):
    """The crash watch and reconcile treat a guest as they treat a sandbox: QEMU
    killed (the whole machine gone at once) is started again, committed rows kept
    (the guest's writes reach the host's files at each fsync: 9p, cache=none)."""
    db = create(alice, "vm")
    with connect(db["connection_string"]) as conn:
        conn.execute("CREATE TABLE notes (body text)")
        conn.execute("INSERT INTO notes VALUES ('committed before the crash')")
    tenant = Tenant.objects.get(pk=db["id"])
    runtime = agent.runtime_for(tenant)
    killed = runtime.status(tenant.instance_id).pid
    assert killed in qemu_of(db)
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = runtime.status(tenant.instance_id)
        if now.state is InstanceState.RUNNING and now.pid not in (None, killed):
            break
        time.sleep(0.1)
    assert runtime.status(tenant.instance_id).pid not in (None, killed), "not booted again"
    assert notes(db) == ["committed before the crash"]
    restarts = Event.objects.filter(tenant=tenant, action="restart")
    while not restarts.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # written just after the start returns
    assert restarts.exists()


def test_a_sleeping_microvm_is_backed_up_without_booting_and_restored(vm_plan, alice):
    db = create(alice, "vm")
    with connect(db["connection_string"]) as conn:
        conn.execute("CREATE TABLE notes (body text)")
        conn.execute("INSERT INTO notes VALUES ('kept')")
    put_to_sleep(alice, db)
    booted = []
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            if qemu_of(db):
                booted.append(True)
            watching.wait(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        backup = back_up(alice, db)
    finally:
        watching.set()
        watcher.join()
    assert not booted and instance_state(db["id"]) is InstanceState.STOPPED
    assert not Event.objects.filter(tenant_id=db["id"], action="wake").exists()

    with connect_waiting(db) as conn:
        conn.execute("INSERT INTO notes VALUES ('lost by the restore')")
    assert restore(alice, db, backup)["state"] == "done"
    assert notes(db) == ["kept"]


def test_the_storage_limit_holds_in_a_microvm(vm_plan, alice):
    """Counted on the host (the data directory is the host's), applied in the guest
    (its settings rewritten and reread through the control port)."""
    db = create(alice, "vm")
    tenant = Tenant.objects.get(pk=db["id"])
    with connect_waiting(db) as conn:
        conn.autocommit = True
        conn.execute("CREATE TABLE t (v text)")
        conn.execute("INSERT INTO t SELECT repeat('x', 1000) FROM generate_series(1, 20000)")
        Plan.objects.filter(pk=vm_plan.pk).update(storage_limit_mb=20)
        measure(tenant.host)
        with pytest.raises(psycopg.errors.DiskFull, match="storage limit of 20 MB"):
            conn.execute("INSERT INTO t VALUES ('more')")
        conn.execute("DROP TABLE t")
        measure(tenant.host)
        conn.execute("CREATE TABLE t (v text)")


def test_deleting_a_microvm_leaves_no_process_file_or_device(vm_plan, alice):
    links_before = set(Path("/sys/class/net").iterdir())
    db = create(alice, "vm")
    tenant = Tenant.objects.get(pk=db["id"])
    runtime = agent.runtime_for(tenant)
    assert qemu_of(db)
    assert alice.call("DELETE", f"/databases/{db['id']}").status_code == 202
    wait_for_state(db["id"], "deleted")
    assert processes_of_uid(uid_of(db)) == []
    assert not runtime.instance_dir(tenant.instance_id).exists()
    assert set(Path("/sys/class/net").iterdir()) == links_before


def test_a_guest_sees_only_its_image_and_data_and_reaches_nothing(vm_plan, alice):
    db = create(alice, "vm")
    other = create(alice, "other")
    tenant = Tenant.objects.get(pk=db["id"])
    runtime = agent.runtime_for(tenant)
    other_dir = agent.runtime_for(Tenant.objects.get(pk=other["id"])).instance_dir(
        Tenant.objects.get(pk=other["id"]).instance_id
    )
    # A listener on the host's loopback: nothing in a guest may reach it.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    with postgres_admin.connect(runtime.admin_socket_dir(tenant.instance_id)) as conn:
        # Its root is the image's: none of the host's own directories.
        root = {row[0] for row in conn.execute("SELECT pg_ls_dir('/')")}
        assert root <= {"data", "dev", "etc", "lib", "lib64", "proc", "run", "tmp", "usr"}
        passwd = conn.execute("SELECT pg_read_file('/etc/passwd')").fetchone()[0]
        assert passwd != Path("/etc/passwd").read_text()
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT pg_stat_file(%s)", [str(other_dir)])
        # No address outside the guest answers: not the host's, not the internet.
        for host in ("10.0.2.2", "10.0.3.2", "127.0.0.1", "192.0.2.1"):
            with pytest.raises(psycopg.Error, match="could not connect"):
                conn.execute(
                    f"CREATE SUBSCRIPTION probe CONNECTION 'host={host} port={port} "
                    "connect_timeout=3 dbname=x' PUBLICATION p"
                )
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()


def test_a_guest_that_hangs_at_boot_is_killed_and_its_database_failed(vm_plan, alice):
    """A guest whose init never starts postgres: the start gives up at its timeout,
    QEMU is gone, and the database is failed with the reason."""
    link = images_dir() / "guest"
    real = guest.load_guest(images_dir())
    hanging = images_dir() / "guest@hanging-test"
    shutil.rmtree(hanging, ignore_errors=True)
    hanging.mkdir()
    shutil.copyfile(real.kernel, hanging / real.kernel.name)
    shutil.copyfile(real.path / "manifest.json", hanging / "manifest.json")
    init = b"#!/bin/busybox sh\n/bin/busybox echo dbaas-guest: hanging\n/bin/busybox sleep 999999\n"
    (hanging / "initramfs.cpio").write_bytes(
        guest._cpio(
            [("init", init, 0o755), ("bin/busybox", guest.BUSYBOX.read_bytes(), 0o755)],
            directories=guest.DIRECTORIES,
        )
    )
    previous = link.readlink()
    link.unlink()
    link.symlink_to(hanging.name)
    try:
        response = alice.call("POST", "/databases", {"name": "hangs"})
        assert response.status_code in (202, 500), response.content
        body = response.json()
        db = body["database"] if response.status_code == 500 else body
        wait_for_state(db["id"], "failed", timeout=120)
    finally:
        link.unlink()
        link.symlink_to(previous)
        shutil.rmtree(hanging, ignore_errors=True)
    tenant = Tenant.objects.get(pk=db["id"])
    assert "not ready after" in tenant.state_reason, tenant.state_reason
    assert processes_of_uid(uid_of(db)) == []
    assert alice.call("GET", f"/databases/{db['id']}").json()["state_reason"]
