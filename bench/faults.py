#!/usr/bin/env python3
"""How long the platform takes to heal from killed processes, against a running one.

Start the platform (`make run`) first, then, as root on the same machine:

    .venv/bin/python bench/faults.py [--url http://127.0.0.1:8000] [--repeat 5]

Each fault is injected `--repeat` times, one at a time, and timed until the thing
works again from a client's point of view:

- a tenant's postmaster SIGKILLed: until `SELECT 1` through the pooler answers;
- Redis SIGKILLed: until it answers PING (the services watcher restarts it);
- the control-plane PostgreSQL's postmaster SIGKILLed: until `GET /api/v1/databases`
  answers 200 again (watcher restart, crash recovery, the web's reconnect).

Prints a table of medians and maxima; nothing is left behind but the database it
made (deleted at the end).
"""

import argparse
import os
import signal
import statistics
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dbaas.settings")

import django  # noqa: E402

django.setup()

import psycopg  # noqa: E402

from bench.provision import api, sign_up, trust_platform_ca  # noqa: E402
from dbaas.env import services_dir  # noqa: E402
from dbaas.localservices import ControlPlanePostgres, LocalRedis  # noqa: E402
from tenants.host import agent  # noqa: E402
from tenants.models import Tenant  # noqa: E402

TIMEOUT = 120


def until(check) -> float:
    """Seconds until `check()` is true (polled every 20 ms); raises after TIMEOUT."""
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except Exception:  # noqa: S110 - not yet: keep polling
            pass
        if time.monotonic() - started > TIMEOUT:
            raise SystemExit(f"not healed after {TIMEOUT} s")
        time.sleep(0.02)


def tenant_answers(url: str) -> bool:
    with psycopg.connect(url, connect_timeout=2) as conn:
        return conn.execute("SELECT 1").fetchone() == (1,)


def api_answers(base: str, token: str) -> bool:
    request = urllib.request.Request(  # noqa: S310 - the operator's own URL
        f"{base}/api/v1/databases", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def kill_pidfile(path: Path) -> None:
    os.kill(int(path.read_text().split()[0]), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    trust_platform_ca(args.url)
    run = str(int(time.time()))
    token = sign_up(args.url, f"faults-{run}@example.com", f"bench pw {run}")
    status, db = api(args.url, "POST", "/databases", {"name": "faults"}, token)
    assert status == 201, db
    url = db["connection_string"]
    tenant = Tenant.objects.get(pk=db["id"])
    runtime = agent.runtime_for(tenant)
    results: dict[str, list[float]] = {"tenant postmaster": [], "Redis": [], "control plane": []}
    try:
        for _ in range(args.repeat):
            tenant_answers(url)
            pid = runtime.status(tenant.instance_id).pid
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)  # let it die before the first look
            results["tenant postmaster"].append(
                until(lambda: tenant_answers(db["connection_string"]))
            )
            time.sleep(1)

            local_redis = LocalRedis(services_dir())
            kill_pidfile(local_redis.pidfile)
            time.sleep(0.05)
            results["Redis"].append(until(local_redis.is_running))
            time.sleep(2)

            controlplane = ControlPlanePostgres(services_dir())
            kill_pidfile(controlplane.pgdata / "postmaster.pid")
            time.sleep(0.05)
            results["control plane"].append(until(lambda: api_answers(args.url, token)))
            time.sleep(2)
    finally:
        until(lambda: api_answers(args.url, token))
        api(args.url, "DELETE", f"/databases/{db['id']}", token=token)

    print(f"\n{'fault (SIGKILL)':<22}{'runs':>6}{'median s':>10}{'max s':>8}")
    for name, times in results.items():
        print(f"{name:<22}{len(times):>6}{statistics.median(times):>10.2f}{max(times):>8.2f}")


if __name__ == "__main__":
    main()
