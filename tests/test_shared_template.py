"""Every database of an image shares the image's template cluster, read-only, under
a layer of its own (unikernel_images/overlay.py): a tenant's writes never reach the
shared template nor another tenant, and a new database costs what it changes."""

import hashlib
import os
from pathlib import Path

from tenants.host import agent
from tenants.models import Tenant
from tests.conftest import connect
from tests.helpers import back_up, create, put_to_sleep, restore, wait_for


def _tree(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under `root`: its mode and content hash."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(root))] = (path.stat().st_mode, digest)
    return found


def _layer(tenant_id: int) -> Path:
    tenant = Tenant.objects.get(pk=tenant_id)
    return agent.runtime_for(tenant).instance_dir(tenant.instance_id) / "layer"


def _upper_bytes(tenant_id: int) -> int:
    return sum(
        p.lstat().st_blocks * 512 for p in (_layer(tenant_id) / "upper").rglob("*") if p.is_file()
    )


def test_a_tenants_writes_never_reach_the_shared_template(live, alice):
    first = create(alice, "layered1")
    second = create(alice, "layered2")
    shared = (_layer(first["id"]) / "lower").resolve()
    assert shared == (_layer(second["id"]) / "lower").resolve()  # one copy for both
    assert os.stat(shared.parent).st_mode & 0o777 == 0o700  # reached only by overlays
    before = _tree(shared)

    with connect(first["connection_string"], autocommit=True) as conn:
        conn.execute("CREATE TABLE mine AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
        conn.execute("CREATE INDEX ON mine (g)")  # catalogs change too
        conn.execute("VACUUM FULL mine")
        table = conn.execute("SELECT pg_relation_filepath('mine')").fetchone()[0]
    put_to_sleep(alice, first)

    # The table is in the tenant's own layer, not below it; the template is as it was.
    assert (_layer(first["id"]) / "upper" / table).exists()
    assert not (shared / table).exists()
    assert _tree(shared) == before
    # The other tenant sees none of it.
    with connect(second["connection_string"]) as conn:
        assert conn.execute("SELECT to_regclass('mine')").fetchone() == (None,)
    # A new database costs what it changed: far less than the template (~39 MB).
    assert _upper_bytes(second["id"]) < 8 << 20, _upper_bytes(second["id"])


def test_a_layered_database_backs_up_and_restores_asleep_and_awake(live, alice):
    db = create(alice, "layeredbk")
    with connect(db["connection_string"], autocommit=True) as conn:
        conn.execute("CREATE TABLE kept AS SELECT 1 AS v")
    put_to_sleep(alice, db)
    asleep = back_up(alice, db)  # from the layers, without starting it
    with connect(db["connection_string"], autocommit=True) as conn:  # wakes it
        conn.execute("INSERT INTO kept VALUES (2)")
    restore(alice, db, asleep)
    wait_for(alice, f"/databases/{db['id']}", ("running", "sleeping"))
    with connect(db["connection_string"]) as conn:
        assert conn.execute("SELECT array_agg(v ORDER BY v) FROM kept").fetchone() == ([1],)
    # Restored data is whole: a layer over nothing, still the tenant's own.
    assert (_layer(db["id"]) / "lower").resolve().name == ".empty"


def test_the_size_read_from_the_layers_is_the_size_the_overlay_shows(tmp_path):
    """merged_bytes (what the storage limit counts, without mounting anything)
    against the kernel's own overlay of the same layers."""
    import subprocess

    from unikernel_images import overlay

    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for path in (lower / "kept", lower / "gone", lower / "hidden", upper / "hidden", work, merged):
        path.mkdir(parents=True)
    for name, size in [
        ("kept/a", 10_000),
        ("kept/b", 50_000),
        ("gone/c", 70_000),
        ("hidden/d", 30_000),
        ("top", 5_000),
    ]:
        (lower / name).write_bytes(os.urandom(size))
    (upper / "kept").mkdir()
    (upper / "kept" / "b").write_bytes(os.urandom(200_000))  # copied up and grown
    (upper / "kept" / "new").write_bytes(os.urandom(40_000))
    os.mknod(upper / "gone", 0o600 | 0o020000, os.makedev(0, 0))  # a whiteout
    os.setxattr(upper / "hidden", overlay.OPAQUE_XATTR, b"y")  # made anew over lower's
    (upper / "hidden" / "e").write_bytes(os.urandom(8_000))

    mount = overlay.mount_command(lower, upper, work, merged)
    script = 'set -e; "$@"; find "$0" -type f -printf "%b\\n"'  # blocks of each file
    shown = subprocess.run(
        [*overlay.private_namespace(), "sh", "-c", script, str(merged), *mount],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert overlay.merged_bytes(lower, upper) == sum(int(b) * 512 for b in shown)
