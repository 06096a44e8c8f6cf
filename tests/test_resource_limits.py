"""What one tenant may use of the host, from its plan: memory (its server's
processes together, and each one's address space), CPU, temporary files, and
work_mem ceilings the owner cannot raise. A tenant that asks for too much loses
its own query, never a neighbour's."""

import threading
import time
from pathlib import Path

import psycopg
import pytest

from tenants.host import agent
from tenants.models import Account, Plan, Tenant
from tests.conftest import connect
from tests.helpers import create, put_to_sleep
from unikernel_images import cgroups

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def small_plan(live):
    plan = Plan.objects.create(
        name="small",
        memory_limit_mb=256,
        cpu_limit=0.25,
        temp_file_limit_mb=8,
        work_mem_max_mb=16,
    )
    return plan


def _on_plan(email: str, plan: Plan) -> None:
    Account.objects.filter(user__email=email).update(plan=plan)


def test_a_query_that_wants_a_gigabyte_fails_alone(small_plan, alice, bob):
    _on_plan("alice@example.com", small_plan)
    greedy, neighbour = create(alice, "greedy"), create(bob, "neighbour")
    answers: list[object] = []

    def neighbour_works() -> None:
        with connect(neighbour["connection_string"], autocommit=True) as conn:
            for _ in range(20):
                answers.append(conn.execute("SELECT count(*) FROM pg_class").fetchone()[0])
                time.sleep(0.05)

    thread = threading.Thread(target=neighbour_works)
    thread.start()
    bystander = connect(greedy["connection_string"], autocommit=True)
    with connect(greedy["connection_string"], autocommit=True) as conn:
        # A gigabyte, and 200 MB: more than one process may take of the plan's 256
        # MB, but less than the instance's limit, where the kernel would kill it
        # and PostgreSQL restart the whole server.
        for size in (1_000_000_000, 200_000_000):
            with pytest.raises(psycopg.errors.OutOfMemory):
                conn.execute(f"SELECT length(repeat('x', {size}))")
        # Its own session goes on, the server did not restart.
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert bystander.execute("SELECT 1").fetchone() == (1,)
    bystander.close()
    thread.join(30)
    assert len(answers) == 20


def test_the_instance_runs_in_cgroups_with_its_plans_limits(small_plan, alice):
    groups = cgroups.detect()
    if groups is None:
        pytest.fail("no usable cgroups on this host (the platform runs as root here)")
    _on_plan("alice@example.com", small_plan)
    db = create(alice, "limited")
    tenant = Tenant.objects.get(pk=db["id"])
    pid = agent.runtime_for(tenant).status(tenant.instance_id).pid
    membership = Path(f"/proc/{pid}/cgroup").read_text()
    assert f"/dbaas/{tenant.instance_id}" in membership
    before = groups.cpu_throttled(tenant.instance_id)
    with connect(db["connection_string"], autocommit=True) as conn:
        started = time.monotonic()
        conn.execute(
            "DO $$ DECLARE x bigint := 0; BEGIN"
            " FOR i IN 1..3000000 LOOP x := x + i; END LOOP; END $$"
        )
        elapsed = time.monotonic() - started
    # A quarter of a CPU: the query was held back, its wall time several times its CPU time.
    assert groups.cpu_throttled(tenant.instance_id) > before, elapsed

    # Asleep, it has no groups at all (reclaim walks every memory group there is:
    # one per sleeping database stalled a host of 10,000); a wake makes them again.
    put_to_sleep(alice, db)
    assert not any(path.parent.exists() for path in groups.procs_files(tenant.instance_id))
    with connect(db["connection_string"], autocommit=True) as conn:
        conn.execute("SELECT 1")
    pid = agent.runtime_for(tenant).status(tenant.instance_id).pid
    assert f"/dbaas/{tenant.instance_id}" in Path(f"/proc/{pid}/cgroup").read_text()


def test_the_owner_cannot_raise_work_mem_or_temp_file_limit(small_plan, alice):
    _on_plan("alice@example.com", small_plan)
    db = create(alice, "tidy")
    with connect(db["connection_string"], autocommit=True) as conn:
        conn.execute("SET work_mem = '16MB'")
        for statement in (
            "SET work_mem = '64GB'",
            "SELECT set_config('maintenance_work_mem', '1GB', false)",
            "ALTER ROLE CURRENT_USER SET work_mem = '1GB'",
            f"ALTER DATABASE {db['database']} SET work_mem = '1GB'",
        ):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="at most 16 MB"):
                conn.execute(statement)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET temp_file_limit = -1")
        # A sort that spills more than the plan's 8 MB of temporary files stops.
        conn.execute("SET work_mem = '1MB'")
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="temp_file_limit"):
            conn.execute("SELECT md5(i::text) FROM generate_series(1, 2000000) i ORDER BY 1")
    with pytest.raises(psycopg.OperationalError, match="work_mem"):
        connect(db["connection_string"], options="-c work_mem=2GB")
