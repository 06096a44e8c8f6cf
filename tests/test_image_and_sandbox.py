"""The instance image (of the newest PostgreSQL major this host has) and the sandbox
runtime, without the control plane."""

import json
import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from dbaas.env import controlplane_user, pooler_user
from tests.helpers import in_instance_data
from unikernel_images import cgroups, page_cache
from unikernel_images.image import build_image, image_name, load_image, newest_major
from unikernel_images.paths import images_dir
from unikernel_images.runtimes import get_runtime
from unikernel_images.runtimes.base import InstanceError, InstanceSpec, InstanceState

# It builds the image and starts tenant servers: not for the fast tier.
pytestmark = [pytest.mark.timeout(120), pytest.mark.platform]
MAJOR = newest_major()


@pytest.fixture(scope="module")
def image():
    user = controlplane_user() if os.geteuid() == 0 else None
    return build_image(images_dir(), image_name(MAJOR), build_user=user, progress=lambda _: None)


def test_the_image_is_minimal_and_described_by_its_manifest(image):
    manifest = json.loads((image.path / "manifest.json").read_text())
    assert manifest["name"] == f"postgres-{MAJOR}"
    assert manifest["version"].startswith(f"{MAJOR}.")
    assert manifest["major"] == MAJOR
    assert len(manifest["content_hash"]) == 64
    assert manifest["rootfs_bytes"] > 0 and manifest["template_bytes"] > 0
    root = image.rootfs
    assert (root / f"usr/lib/postgresql/{MAJOR}/bin/postgres").exists()
    # Every time zone the OS knows, as its postgres would.
    zones = {p.relative_to("/usr/share/zoneinfo") for p in Path("/usr/share/zoneinfo").rglob("*")}
    copied = {
        p.relative_to(root / "usr/share/zoneinfo") for p in (root / "usr/share/zoneinfo").rglob("*")
    }
    assert zones - copied <= {Path("localtime")}
    # A single-application root: no shell, no other programs.
    assert not (root / "bin/sh").exists() and not (root / "usr/bin/bash").exists()
    assert sorted(p.name for p in (root / "usr/bin").iterdir()) == ["setpriv"]
    assert (image.template / "PG_VERSION").read_text().strip() == MAJOR
    conf = (image.template / "postgresql.conf").read_text()
    assert "listen_addresses = ''" in conf


def test_building_again_is_a_no_op(image):
    again = build_image(
        images_dir(),
        image_name(MAJOR),
        build_user=controlplane_user() if os.geteuid() == 0 else None,
        progress=lambda _: None,
    )
    assert again.path == image.path
    assert again.manifest["built_at"] == image.manifest["built_at"]


def test_a_missing_image_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="build_image"):
        load_image(tmp_path, image_name(MAJOR))


@pytest.fixture
def sandbox(image, tmp_path_factory):
    root = settings.DATA_DIR / "sandbox-test"
    runtime = get_runtime("sandbox", root)
    spec = InstanceSpec(
        instance_id=f"s{os.getpid()}",
        image=image,
        uid=settings.DBAAS_TENANT_UID_BASE + 900000 if os.geteuid() == 0 else None,
        socket_group=pooler_user() if os.geteuid() == 0 else None,
    )
    runtime.destroy(spec.instance_id)
    yield runtime, spec
    runtime.destroy(spec.instance_id)


def _superuser(runtime, spec) -> psycopg.Connection:
    return psycopg.connect(
        host=str(runtime.socket_dir(spec.instance_id)),
        user="platform",
        dbname="postgres",
        autocommit=True,
    )


def test_an_instance_starts_stops_and_is_isolated(sandbox):
    runtime, spec = sandbox
    assert runtime.status(spec.instance_id).state is InstanceState.MISSING
    runtime.create(spec)
    assert runtime.status(spec.instance_id).state is InstanceState.STOPPED
    started = time.monotonic()
    runtime.start(spec)
    assert time.monotonic() - started < 5
    status = runtime.status(spec.instance_id)
    assert status.state is InstanceState.RUNNING
    runtime.start(spec)  # idempotent
    assert runtime.status(spec.instance_id).pid == status.pid

    with _superuser(runtime, spec) as conn:
        assert conn.execute("SHOW data_checksums").fetchone()[0] == "on"
        assert (
            conn.execute(
                "SELECT datcollate FROM pg_database WHERE datname = current_database()"
            ).fetchone()[0]
            == "C"
        )
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == ""
    pid = status.pid
    proc = Path(f"/proc/{pid}")
    for ns in ("pid", "net", "mnt", "ipc", "uts"):
        assert os.readlink(proc / "ns" / ns) != os.readlink(f"/proc/self/ns/{ns}"), ns
    if os.geteuid() == 0:
        assert proc.stat().st_uid == spec.uid
        caps = [
            line
            for line in (proc / "status").read_text().splitlines()
            if line.startswith(("CapEff", "CapBnd"))
        ]
        assert all(line.split()[1] == "0000000000000000" for line in caps), caps
    # No TCP listener: its network namespace has no socket at all besides loopback.
    tcp = (proc / "net" / "tcp").read_text().splitlines()[1:]
    tcp6 = (proc / "net" / "tcp6").read_text().splitlines()[1:]
    assert tcp == [] and tcp6 == []
    # The root is read-only and only /data is writable.
    mounts = (proc / "mounts").read_text().splitlines()
    root_mount = next(m for m in mounts if m.split()[1] == "/")
    assert "ro" in root_mount.split()[3].split(",")

    runtime.stop(spec.instance_id)
    assert runtime.status(spec.instance_id).state is InstanceState.STOPPED
    assert not proc.exists() or "Z" in (proc / "stat").read_text().split(")")[1][:3]
    runtime.start(spec)
    assert runtime.status(spec.instance_id).state is InstanceState.RUNNING
    runtime.destroy(spec.instance_id)
    assert runtime.status(spec.instance_id).state is InstanceState.MISSING
    assert not runtime.instance_dir(spec.instance_id).exists()


def test_a_start_failure_says_why(sandbox):
    runtime, spec = sandbox
    runtime.create(spec)
    in_instance_data(
        runtime, spec.instance_id, "echo \"max_connections = 'lots'\" > $1/instance.conf"
    )
    with pytest.raises(InstanceError, match="max_connections"):
        runtime.start(spec)
    assert runtime.status(spec.instance_id).state is InstanceState.STOPPED


def test_a_start_that_meets_a_status_probe_still_starts(sandbox):
    """status() takes the instance lock for an instant; a start meeting it must not
    mistake it for a running instance (found under load: a wake served nothing)."""
    import fcntl
    import threading

    runtime, spec = sandbox
    runtime.create(spec)
    lock = runtime.instance_dir(spec.instance_id) / "instance.lock"
    probe = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(probe, fcntl.LOCK_EX)  # a probe, descheduled while it holds the lock
    threading.Timer(0.1, os.close, (probe,)).start()
    runtime.start(spec)
    assert runtime.status(spec.instance_id).state is InstanceState.RUNNING
    with _superuser(runtime, spec) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _resident_bytes(files) -> int:
    """How much of these files is in the page cache (util-linux's fincore)."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(line) for line in out.split())


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and layers need root")
def test_a_sleeping_servers_group_takes_no_shared_pages_with_it(sandbox):
    """A stopped instance's memory group is emptied (memory.force_empty) and removed;
    emptying it evicts every page charged to it. The template every layered instance
    reads through overlayfs must be charged to the host, not to whichever tenant
    read it first, or one tenant's sleep evicts it from under all the others."""
    if cgroups.detect() is None:
        pytest.fail("no usable cgroups on this host (the platform runs as root here)")
    runtime, spec = sandbox
    spec = replace(spec, limits=cgroups.Limits(memory_bytes=256 << 20, cpus=1, processes=64))
    runtime.create(spec)
    template = page_cache.shared_files(runtime._shared_template(spec.image), elf_only=False)
    for path in template:  # out of the cache (pages no process maps)
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    page_cache.forget()
    runtime.start(spec)
    with _superuser(runtime, spec) as conn:
        conn.execute("SELECT count(*) FROM pg_class JOIN pg_attribute ON attrelid = oid")
    cached = _resident_bytes(template)
    assert cached > 1 << 20, cached
    runtime.stop(spec.instance_id)
    assert _resident_bytes(template) >= cached
