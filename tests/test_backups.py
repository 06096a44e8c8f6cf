"""Backups and in-place restore, through the API and the real worker (local store)."""

import time

import psycopg
import pytest
from django.conf import settings

from tenants.models import Backup, Tenant
from tests.conftest import connect, wait_until
from tests.helpers import back_up, create, instance_state, put_to_sleep, restore, wait_for
from unikernel_images.runtimes.base import InstanceState

pytestmark = pytest.mark.timeout(180)


def rows(database: dict) -> list[tuple]:
    with connect(database["connection_string"]) as conn:
        return conn.execute("SELECT v FROM t ORDER BY v").fetchall()


@pytest.fixture
def database(live, alice):
    database = create(alice, "precious")
    with connect(database["connection_string"]) as conn:
        conn.execute("CREATE TABLE t (v int)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 1000)")
    return database


def test_restore_in_place_gives_back_exactly_the_backed_up_rows(database, alice):
    backup = back_up(alice, database)
    assert backup["kind"] == "base"
    assert backup["size_bytes"] > backup["compressed_bytes"] > 0
    assert len(backup["sha256"]) == 64
    with connect(database["connection_string"]) as conn:
        conn.execute("DELETE FROM t WHERE v > 10")
        conn.execute("INSERT INTO t VALUES (5000)")
    result = restore(alice, database, backup)
    assert result["state"] == "done", result
    assert rows(database) == [(v,) for v in range(1, 1001)]
    listed = alice.call("GET", f"/databases/{database['id']}/backups").json()["backups"]
    assert [b["id"] for b in listed] == [backup["id"]]


def test_a_sleeping_tenant_is_backed_up_without_waking_it(database, alice):
    put_to_sleep(alice, database)
    backup = back_up(alice, database)
    assert backup["kind"] == "cold"
    assert Tenant.objects.get(pk=database["id"]).state == "sleeping"
    assert instance_state(database["id"]) is InstanceState.STOPPED
    assert Tenant.objects.get(pk=database["id"]).wake_count == 0
    # ... and that copy restores.
    with connect(database["connection_string"]) as conn:
        conn.execute("TRUNCATE t")
    assert restore(alice, database, backup)["state"] == "done"
    assert len(rows(database)) == 1000


def test_a_corrupted_backup_is_refused_and_the_tenant_keeps_its_data(database, alice):
    backup = back_up(alice, database)
    row = Backup.objects.get(pk=backup["id"])
    path = settings.DATA_DIR / "backups" / row.location
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with connect(database["connection_string"]) as conn:
        conn.execute("INSERT INTO t VALUES (424242)")
    result = restore(alice, database, backup)
    assert result["state"] == "failed"
    assert "corrupted" in result["error"] or "sha256" in result["error"]
    assert instance_state(database["id"]) is InstanceState.RUNNING
    assert rows(database)[-1] == (424242,)
    assert len(rows(database)) == 1001


def test_backup_errors(database, alice, bob):
    assert bob.call("GET", f"/databases/{database['id']}/backups").status_code == 404
    assert bob.call("POST", f"/databases/{database['id']}/backups").status_code == 404
    assert alice.call("GET", f"/databases/{database['id']}/backups/999999").status_code == 404
    backup = back_up(alice, database)
    path = f"/databases/{database['id']}/backups/{backup['id']}/restore"
    assert alice.call("POST", path, {"target": "elsewhere"}).status_code == 400
    assert bob.call("POST", path).status_code == 404


def test_daily_backups_skip_unchanged_tenants(database, alice):
    from datetime import timedelta

    from django.utils import timezone

    from tenants import backups

    # The host saw its owner's writes (the idle check counts transactions) ...
    wait_until(lambda: Tenant.objects.get(pk=database["id"]).last_active_at, timeout=20)
    # ... and, as if it had not, nothing would be saved.
    now = timezone.now()
    Tenant.objects.filter(pk=database["id"]).update(last_active_at=None)
    assert backups.backups_schedule(now=now) == 0  # never used: nothing to save
    Tenant.objects.filter(pk=database["id"]).update(last_active_at=now - timedelta(minutes=1))
    assert backups.backups_schedule(now=now) == 1  # used, never backed up
    first = Backup.objects.get(tenant_id=database["id"])
    wait_for(alice, f"/databases/{database['id']}/backups/{first.pk}", ("done",))
    assert backups.backups_schedule(now=now) == 0  # not due yet
    later = now + timedelta(days=2)
    Tenant.objects.filter(pk=database["id"]).update(last_active_at=now - timedelta(hours=1))
    assert backups.backups_schedule(now=later) == 0  # due, but nothing changed
    Tenant.objects.filter(pk=database["id"]).update(last_active_at=later - timedelta(hours=1))
    assert backups.backups_schedule(now=later) == 1


def test_a_database_nobody_has_used_is_not_backed_up(live, alice):
    from tenants import backups

    unused = create(alice, "unused")  # made, running, never connected to
    tenant = Tenant.objects.get(pk=unused["id"])
    assert tenant.state == "running" and tenant.last_active_at is None
    backups.backups_schedule()
    assert not Backup.objects.filter(tenant=tenant).exists()
    with connect(unused["connection_string"]) as conn:
        conn.execute("CREATE TABLE t (v int)")
    # Its owner's transaction, seen by the host's idle check: used from now on.
    wait_until(lambda: Tenant.objects.get(pk=tenant.pk).last_active_at, timeout=30)
    backups.backups_schedule()
    assert Backup.objects.filter(tenant=tenant).exists()


def test_retention_deletes_exactly_the_expired_ones(database, alice):
    from tenants import backups
    from tenants.models import Plan

    made = [back_up(alice, database) for _ in range(3)]
    Plan.objects.filter(name="free").update(backups_kept=2)
    assert backups.backups_expire() == 1
    states = {b.pk: b.state for b in Backup.objects.filter(tenant_id=database["id"])}
    assert states == {made[0]["id"]: "expired", made[1]["id"]: "done", made[2]["id"]: "done"}

    def files() -> dict[int, bool]:
        return {
            b.pk: (settings.DATA_DIR / "backups" / b.location).exists()
            for b in Backup.objects.filter(tenant_id=database["id"])
        }

    # Deleted by the database's host, on its bulk queue.
    wait_until(lambda: not files()[made[0]["id"]], timeout=30)
    assert files() == {made[0]["id"]: False, made[1]["id"]: True, made[2]["id"]: True}
    assert backups.backups_expire() == 0


def test_a_backup_abandoned_by_a_dead_worker_is_failed(database):
    from datetime import timedelta

    from django.utils import timezone

    from tenants import backups

    tenant = Tenant.objects.get(pk=database["id"])
    stale = Backup.objects.create(
        tenant=tenant, state="running", started_at=timezone.now() - timedelta(hours=1)
    )
    assert backups.backups_fail_abandoned() == 1
    stale.refresh_from_db()
    assert stale.state == "failed" and "lost" in stale.error


def test_backups_go_to_s3_and_come_back(database, alice):
    from tenants.backup_stores import get_store
    from tenants.backups import backup_request

    tenant = Tenant.objects.select_related("host").get(pk=database["id"])
    backup = backup_request(tenant=tenant, actor="test", store="s3")
    done = wait_for(alice, f"/databases/{database['id']}/backups/{backup.pk}", ("done", "failed"))
    assert done["state"] == "done" and done["store"] == "s3", done
    backup.refresh_from_db()
    assert get_store("s3", settings.DATA_DIR).exists(backup.location)
    with connect(database["connection_string"]) as conn:
        conn.execute("DELETE FROM t")
    assert restore(alice, database, done)["state"] == "done"
    assert len(rows(database)) == 1000


def test_restore_into_a_new_database_leaves_the_original_untouched(database, alice):
    backup = back_up(alice, database)
    with connect(database["connection_string"]) as conn:
        conn.execute("INSERT INTO t VALUES (777777)")
    path = f"/databases/{database['id']}/backups/{backup['id']}/restore"
    assert alice.call("POST", path, {"target": "new", "name": "Bad Name"}).status_code == 400
    response = alice.call("POST", path, {"target": "new", "name": "copy"})
    assert response.status_code == 201, response.content
    copy = response.json()
    assert copy["name"] == "copy" and copy["database"] != database["database"]
    assert rows(copy) == [(v,) for v in range(1, 1001)]
    assert len(rows(database)) == 1001 and rows(database)[-1] == (777777,)
    with connect(copy["connection_string"]) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == copy["user"]
        conn.execute("INSERT INTO t VALUES (1)")  # it owns its tables
    # The original's credentials do not open the copy.
    crossed = database["connection_string"].replace(
        f"/{database['database']}?", f"/{copy['database']}?"
    )
    with pytest.raises(psycopg.OperationalError):
        connect(crossed)


def test_a_deleted_databases_last_backup_stays_restorable(database, alice, bob):
    old = back_up(alice, database)
    newest = back_up(alice, database)
    assert alice.call("DELETE", f"/databases/{database['id']}").status_code == 202
    states = dict(Backup.objects.filter(tenant_id=database["id"]).values_list("id", "state"))
    assert states == {old["id"]: "expired", newest["id"]: "done"}
    listed = alice.call("GET", "/backups").json()["backups"]
    assert [(b["id"], b["database_name"]) for b in listed] == [(newest["id"], "precious")]
    assert bob.call("GET", "/backups").json() == {"backups": []}
    assert bob.call("POST", f"/backups/{newest['id']}/restore", {"name": "x"}).status_code == 404
    response = alice.call("POST", f"/backups/{newest['id']}/restore", {"name": "revived"})
    assert response.status_code == 201, response.content
    assert len(rows(response.json())) == 1000


def test_purge_deletes_every_backup_with_the_database(database, alice):
    backup = back_up(alice, database)
    assert alice.call("DELETE", f"/databases/{database['id']}?purge=maybe").status_code == 400
    assert alice.call("DELETE", f"/databases/{database['id']}?purge=true").status_code == 202
    assert Backup.objects.get(pk=backup["id"]).state == "expired"
    # The file goes from the database's host, on its bulk queue.
    stored = settings.DATA_DIR / "backups" / Backup.objects.get(pk=backup["id"]).location
    wait_until(lambda: not stored.exists(), timeout=30)
    assert alice.call("GET", "/backups").json() == {"backups": []}


def test_a_logical_export_can_be_downloaded(database, alice, tmp_path):
    import hashlib
    import subprocess

    assert (
        alice.call("POST", f"/databases/{database['id']}/backups", {"kind": "tar"}).status_code
        == 400
    )
    response = alice.call("POST", f"/databases/{database['id']}/backups", {"kind": "logical"})
    assert response.status_code == 202
    export = wait_for(
        alice, f"/databases/{database['id']}/backups/{response.json()['id']}", ("done", "failed")
    )
    assert export["state"] == "done" and export["kind"] == "logical", export
    download = alice.client.get(
        f"/api/v1/databases/{database['id']}/backups/{export['id']}/download",
        HTTP_AUTHORIZATION=f"Bearer {alice.token}",
    )
    assert download.status_code == 200
    body = b"".join(download.streaming_content)
    assert hashlib.sha256(body).hexdigest() == export["sha256"] == download["X-Checksum-SHA256"]
    dump = tmp_path / "export.dump"
    dump.write_bytes(body)
    listing = subprocess.run(["pg_restore", "-l", str(dump)], capture_output=True, text=True)
    assert "TABLE DATA public t" in listing.stdout, listing.stderr
    # Physical backups are restored by the platform, not downloaded.
    physical = back_up(alice, database)
    path = f"/databases/{database['id']}/backups/{physical['id']}/download"
    assert alice.call("GET", path).status_code == 400
    path = f"/databases/{database['id']}/backups/{export['id']}/restore"
    assert alice.call("POST", path).status_code == 409


def test_killing_the_worker_mid_backup_fails_it_at_once_and_leaves_nothing(
    database, alice, platform
):
    """The backup's lock dies with its worker: the sweep (each reconcile) sees the
    row `running` with nobody on it, fails it and removes its partial upload."""
    import os
    import signal

    from tests.conftest import Service, worker_service

    with connect(database["connection_string"]) as conn:  # enough data to take a while
        conn.execute(
            "CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 1500000) g"
        )
    response = alice.call("POST", f"/databases/{database['id']}/backups")
    backup_id = response.json()["id"]
    store_dir = settings.DATA_DIR / "backups" / Tenant.objects.get(pk=database["id"]).slug
    # Kill it once its upload has begun.
    wait_until(lambda: list(store_dir.glob(".partial-*")), timeout=30)
    worker: Service = platform["bulk"]
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait()
    killed_at = time.monotonic()
    try:
        # Failed within a reconcile interval or two; its partial object removed.
        wait_until(lambda: Backup.objects.get(pk=backup_id).state == "failed", timeout=30)
        failed_after = time.monotonic() - killed_at
        assert failed_after < settings.DBAAS_RECONCILE_INTERVAL * 2 + 5, failed_after
        assert "worker" in Backup.objects.get(pk=backup_id).error
        assert not list(store_dir.glob(".partial-*"))
        assert alice.call("GET", "/backups").json() == {"backups": []}
    finally:  # a supervisor restarts the worker (the tests after this one need it)
        replacement = worker_service("bulk", generation=2)
        platform["bulk"] = replacement
        replacement.wait_for(lambda: replacement.log_contains(" ready."))
    # The next backup works.
    assert back_up(alice, database)["state"] == "done"


def test_verification_restores_and_amchecks_and_reports_corruption(database, alice):
    from tenants.backups import backup_ref, backups_to_verify
    from tenants.host.backups import backup_verify
    from tenants.host.tasks import backups_verify
    from tests.helpers import reports_applied, spec_of

    good = back_up(alice, database)
    host = Tenant.objects.get(pk=database["id"]).host
    counts = backups_verify(settings.DBAAS_HOST_NAME, backups_to_verify(host, 5))
    assert counts == {"ok": 1, "bad": 0}
    reports_applied()
    row = Backup.objects.get(pk=good["id"])
    assert row.verified_ok is True and "no corruption" in row.verify_message
    path = settings.DATA_DIR / "backups" / row.location
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    ok, message = backup_verify(backup_ref(row), spec_of(database["id"]))
    assert not ok and ("truncated" in message or "sha256" in message)
    reports_applied()
    row.refresh_from_db()
    assert row.verified_ok is False
    assert instance_state(database["id"]) is InstanceState.RUNNING


def test_uploads_cut_short_are_aborted_in_s3(database, s3_server):
    from datetime import timedelta

    from django.utils import timezone

    from tenants.backup_stores import get_store
    from tenants.host import backups

    store = get_store("s3", settings.DATA_DIR)
    upload = store.client.create_multipart_upload(Bucket=store.bucket, Key="x/1-cut.tar.zst")
    store.client.upload_part(
        Bucket=store.bucket,
        Key="x/1-cut.tar.zst",
        PartNumber=1,
        UploadId=upload["UploadId"],
        Body=b"partial" * 1000,
    )

    def pending() -> list[str]:
        listing = store.client.list_multipart_uploads(Bucket=store.bucket)
        return [u["UploadId"] for u in listing.get("Uploads", [])]

    assert upload["UploadId"] in pending()
    assert backups.partials_discard(["s3"]) == 0  # too recent: could be in progress
    assert backups.partials_discard(["s3"], now=timezone.now() + timedelta(hours=1)) >= 1
    assert upload["UploadId"] not in pending()
    assert not store.exists("x/1-cut.tar.zst")


def test_a_burst_of_backups_is_limited_and_does_not_hold_up_others(database, alice, bob):
    """An account has at most DBAAS_BACKUPS_UNFINISHED_PER_ACCOUNT unfinished
    backups; they run on the host's bulk queue, so another account's password
    change is applied at once meanwhile."""
    with connect(database["connection_string"]) as conn:  # so that each backup takes a while
        conn.execute(
            "CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 1000000) g"
        )
    limit = settings.DBAAS_BACKUPS_UNFINISHED_PER_ACCOUNT
    queued = []
    for _ in range(limit):
        response = alice.call("POST", f"/databases/{database['id']}/backups")
        assert response.status_code == 202, response.content
        queued.append(response.json()["id"])
    over = alice.call("POST", f"/databases/{database['id']}/backups")
    assert over.status_code == 429
    assert f"at most {limit} at a time" in over.json()["error"]
    assert Backup.objects.filter(tenant_id=database["id"]).count() == limit  # nothing half-made

    other = create(bob, "neighbour")
    started = time.monotonic()
    reset = bob.call("POST", f"/databases/{other['id']}/password")
    assert reset.status_code == 200
    while True:
        try:
            connect(reset.json()["connection_string"]).close()
            break
        except psycopg.OperationalError:
            assert time.monotonic() - started < 10, "the new password was not applied"
            time.sleep(0.05)
    applied_after = time.monotonic() - started
    unfinished = Backup.objects.filter(pk__in=queued, state__in=["pending", "running"]).count()
    assert unfinished >= 1, "the backups were over before the reset: nothing was shown"
    assert applied_after < 3, applied_after
    for backup_id in queued:  # they all finish, one after another
        path = f"/databases/{database['id']}/backups/{backup_id}"
        assert wait_for(alice, path, ("done", "failed"), timeout=120)["state"] == "done"
    # Once they are done, the account may ask again.
    assert alice.call("POST", f"/databases/{database['id']}/backups").status_code == 202


def test_an_expired_backup_whose_delete_was_lost_is_swept_on_its_host(database, alice):
    from tenants.backups import expired_locations
    from tenants.host.tasks import partials_discard

    row = Backup.objects.get(pk=back_up(alice, database)["id"])
    path = settings.DATA_DIR / "backups" / row.location
    # Expired, as retention does, but the message to its host never went out.
    Backup.objects.filter(pk=row.pk).update(state="expired")
    assert path.exists()
    # The host's daily sweep, with the list the control plane sends it.
    assert partials_discard(settings.DBAAS_HOST_NAME, expired_locations(row.tenant.host)) == 1
    assert not path.exists()
