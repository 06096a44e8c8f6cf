#!/usr/bin/env python3
"""Backup and restore throughput for a tenant with ~1 GB of pgbench data, next to
plain `pg_basebackup` to a local file and `cp -a` of the data directory, in one run.

Start the platform (`make run`), then as root on the same machine:

    .venv/bin/python bench/backup.py [--scale 68] [--s3]

It makes a database through the API, fills it with `pgbench -i`, then times, on the
host: pg_basebackup (tar to a file), cp -a of the data directory, our backup to the
local store (and to S3 with --s3: a SeaweedFS started for the run), and our
in-place restore from each. The database is deleted at the end.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dbaas.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from bench.provision import api, trust_platform_ca  # noqa: E402
from tenants.host import agent, backups  # noqa: E402
from tenants.models import Backup, Restore, Tenant  # noqa: E402


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def start_s3(root: Path) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    weed = Path(sys.executable).parent / "weed"
    proc = subprocess.Popen(
        [
            str(weed),
            "server",
            "-s3",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={root}",
            "-master.port=19433",
            "-volume.port=18180",
            "-filer.port=18988",
            "-s3.port=18433",
            "-master.volumeSizeLimitMB=1024",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    settings.DBAAS_S3_ENDPOINT = "http://127.0.0.1:18433"
    settings.DBAAS_S3_ACCESS_KEY = settings.DBAAS_S3_SECRET_KEY = "bench"
    from tenants.backup_stores import get_store

    deadline = time.monotonic() + 90
    while True:
        try:
            get_store("s3", settings.DATA_DIR).ensure_bucket()
            return proc
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--scale", type=int, default=68, help="pgbench scale (68: ~1 GB)")
    parser.add_argument("--s3", action="store_true", help="also back up to a local SeaweedFS")
    args = parser.parse_args()
    trust_platform_ca(args.url)

    run = str(int(time.time()))
    status, body = api(
        args.url,
        "POST",
        "/accounts",
        {"email": f"backup-{run}@example.com", "password": f"bench pw {run}"},
    )
    token = body["token"]
    status, db = api(args.url, "POST", "/databases", {"name": "pgbench"}, token)
    assert status == 201, db
    tenant = Tenant.objects.select_related("host", "plan").get(pk=db["id"])
    runtime = agent.runtime_for(tenant)
    work = Path(tempfile.mkdtemp(prefix="dbaas-bench-", dir=settings.DATA_DIR))
    s3 = None
    results: list[tuple[str, float]] = []
    try:
        print(f"loading pgbench scale {args.scale} ...", flush=True)
        load = timed(
            lambda: subprocess.run(
                ["pgbench", "-i", "-q", "-s", str(args.scale), db["connection_string"]],
                check=True,
                capture_output=True,
            )
        )
        data_dir = runtime.instance_dir(tenant.instance_id) / "data"
        size = sum(p.stat().st_size for p in data_dir.rglob("*") if p.is_file())
        print(f"loaded in {load:.0f} s; data directory {size / 1e6:.0f} MB", flush=True)

        sock = str(runtime.socket_dir(tenant.instance_id))
        with open(work / "base.tar", "wb") as out:
            results.append(
                (
                    "pg_basebackup -Ft to a local file",
                    timed(
                        lambda: subprocess.run(
                            [
                                "pg_basebackup",
                                "-h",
                                sock,
                                "-U",
                                "platform",
                                "-D",
                                "-",
                                "-F",
                                "tar",
                                "-X",
                                "fetch",
                                "--checkpoint=fast",
                            ],
                            stdout=out,
                            check=True,
                        )
                    ),
                )
            )
        results.append(
            (
                "cp -a of the data directory",
                timed(
                    lambda: subprocess.run(
                        ["cp", "-a", str(data_dir), str(work / "copy")], check=True
                    )
                ),
            )
        )
        shutil.rmtree(work / "copy")
        (work / "base.tar").unlink()

        stores = ["local"]
        if args.s3:
            s3 = start_s3(work / "s3")
            stores.append("s3")
        for store in stores:
            # Made here, not through the worker: the bench times backup_run itself.
            backup = Backup.objects.create(tenant=tenant, requested_by="bench", store=store)
            results.append(
                (f"our backup, zstd, {store} store", timed(lambda b=backup: backups.backup_run(b)))
            )
            backup.refresh_from_db()
            assert backup.state == "done", backup.error
            ratio = backup.size_bytes / backup.compressed_bytes
            print(
                f"{store}: {backup.size_bytes / 1e6:.0f} MB -> "
                f"{backup.compressed_bytes / 1e6:.0f} MB stored ({ratio:.1f}x)",
                flush=True,
            )
            restore = Restore.objects.create(backup=backup, tenant=tenant, requested_by="bench")
            results.append(
                (
                    f"our restore in place, {store} store",
                    timed(lambda r=restore: backups.restore_run(r)),
                )
            )
            restore.refresh_from_db()
            assert restore.state == "done", restore.error
    finally:
        if s3 is not None:
            s3.terminate()
            s3.wait()
        shutil.rmtree(work, ignore_errors=True)
        api(args.url, "DELETE", f"/databases/{db['id']}", token=token)

    base = results[0][1]
    print()
    print(f"bench/backup.py: pgbench scale {args.scale}, data directory {size / 1e6:.0f} MB")
    print(f"{'operation':<40}{'seconds':>9}{'MB/s':>9}{'vs pg_basebackup':>18}")
    for name, seconds in results:
        print(f"{name:<40}{seconds:>9.2f}{size / 1e6 / seconds:>9.0f}{seconds / base:>17.2f}x")


if __name__ == "__main__":
    main()
