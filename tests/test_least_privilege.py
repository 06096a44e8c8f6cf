"""The platform's own services run under accounts of their own, and only the host
agent's account logs in to a tenant's server as the platform's superuser: whoever
takes over PgBouncer (the part that faces the internet) gets neither the control
plane, nor Redis, nor any tenant's data."""

import os
import pwd
import subprocess

import pytest
from django.conf import settings

from dbaas.env import controlplane_user, pooler_user, redis_user, services_dir
from tenants.host import agent
from tenants.models import Tenant
from tests.helpers import create, descendants

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="as an ordinary user everything is that user"),
]


def _owner(pid: int) -> str:
    return pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name


def test_each_service_runs_as_its_own_account(platform):
    root = services_dir()
    controlplane = int((root / "controlplane" / "postmaster.pid").read_text().split()[0])
    redis = int((root / "run" / "redis" / "redis.pid").read_text())
    # run_pooler (as the pooler's account once it has rendered the files) and the
    # host's PgBouncers it runs.
    poolers = [platform["pooler"].proc.pid, *descendants(platform["pooler"].proc.pid)]
    assert len(poolers) > settings.DBAAS_POOLER_SHARDS
    assert {_owner(pid) for pid in poolers} == {pooler_user()}
    owners = {
        "control plane": _owner(controlplane),
        "redis": _owner(redis),
        "pooler": _owner(poolers[0]),
    }
    assert owners == {
        "control plane": controlplane_user(),
        "redis": redis_user(),
        "pooler": pooler_user(),
    }
    assert len(set(owners.values())) == 3
    # The pooler's account reads none of the others' files.
    for path in (root / "controlplane", root / "redis", settings.DATA_DIR / "pki" / "ca.key"):
        probe = subprocess.run(
            ["runuser", "-u", pooler_user(), "--", "ls", str(path)], capture_output=True
        )
        assert probe.returncode != 0, path


def test_only_the_host_agent_logs_in_as_the_platforms_superuser(live, alice):
    db = create(alice, "guarded")
    tenant = Tenant.objects.get(pk=db["id"])
    socket_dir = agent.runtime_for(tenant).socket_dir(tenant.instance_id)
    psql = ["psql", "-X", "-h", str(socket_dir), "-U", "platform", "-d", "postgres", "-tAc"]
    # The pooler's account reaches the socket (it must, to serve the tenant) ...
    as_pooler = subprocess.run(
        ["runuser", "-u", pooler_user(), "--", *psql, "SELECT current_user"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert as_pooler.returncode != 0
    assert "authentication failed" in as_pooler.stderr
    # ... the host agent logs in, by peer authentication, with no password.
    as_agent = subprocess.run(
        [*psql, "SELECT current_user"], capture_output=True, text=True, timeout=30
    )
    assert as_agent.stdout.strip() == "platform", as_agent.stderr
