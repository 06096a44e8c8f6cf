#!/usr/bin/env python3
"""Provisioning and wake latency with one host and with three, side by side in one run.

As root, with nothing else needed (it starts and stops its own platform):

    .venv/bin/python bench/fleet.py [-n 30]

For each layout (DBAAS_HOSTS=1, then DBAAS_HOSTS=3: three hosts in network
namespaces of their own on this machine), a platform of its own is started with
`manage.py up` (data, control plane and Redis under var/bench-fleet/, web on port
8100, poolers on 6632, bridge 10.87.50.0/24), and through its API:

- provisioning: N creates one after the other, from the POST to the first
  `SELECT 1` answered through the database's host's PgBouncer (TLS, verify-full);
- wake, one at a time: each of the N asleep, connect + `SELECT 1`;
- wake, all at once: the N asleep, all connecting together.

Then the platform is stopped (its databases stay in var/bench-fleet, which the next
run starts from scratch). The hosts share this machine's two cores: three hosts do
not add CPU here, each only its own activator and its own wake slots.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR / "bench"))

from provision import api, percentile, sign_up, trust_platform_ca  # noqa: E402
from wake import connect_select, run_concurrent, run_sequential, sleep_all  # noqa: E402

DATA = BASE_DIR / "var" / "bench-fleet"
URL = "http://127.0.0.1:8100"


def environment(name: str, data: Path, web_port: int, pooler_port: int, netns_slot: int) -> dict:
    """A bench platform's settings: data, ports and network namespaces of its own
    (beside a developer's platform), no sign-up or per-address limits."""
    return {
        "DBAAS_DATA_DIR": str(data),
        "DBAAS_WEB_PORT": str(web_port),
        "DBAAS_PGBOUNCER_PORT": str(pooler_port),
        "DBAAS_EXPORTS_PORT": str(pooler_port - 2),
        "DBAAS_NETNS_SLOT": str(netns_slot),
        "DBAAS_HOST_NAME": name,
        "DBAAS_SIGNUPS_PER_IP_HOUR": "100000",
        "DBAAS_POOLER_CONNECTIONS_PER_ADDRESS": "0",
    }


ENVIRONMENT = environment("bench", DATA, web_port=8100, pooler_port=6632, netns_slot=50)


def start(
    hosts: int, data: Path = DATA, environment: dict[str, str] = ENVIRONMENT, url: str = URL
) -> subprocess.Popen:
    """`manage.py up` with `hosts` hosts on a data directory of its own (emptied
    first), once its web server answers (bench/density.py runs one too)."""
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    log = open(data.parent / f"{data.name}-{hosts}.log", "w")  # noqa: SIM115 - the run's
    env = os.environ | environment | {"DBAAS_HOSTS": str(hosts)}
    env.pop("PGSSLROOTCERT", None)
    up = subprocess.Popen(
        [sys.executable, "manage.py", "up"],
        cwd=BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:  # noqa: S310
                if response.status == 200:
                    break
        except OSError:
            pass
        if up.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the platform did not start: see {log.name}")
        time.sleep(1)
    return up


def stop(up: subprocess.Popen) -> None:
    os.killpg(up.pid, signal.SIGINT)
    try:
        up.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(up.pid, signal.SIGKILL)
        up.wait()


def _wait_for_hosts(token: str) -> None:
    """The hosts register once their image is built (the first start of a data
    directory takes a while): until then a create is refused with 503. One database
    made and deleted, with an account of its own, not counted."""
    deadline = time.monotonic() + 300
    while True:
        status, body = api(URL, "POST", "/databases", {"name": "warmup"}, token=token)
        if status in (201, 202):
            api(URL, "DELETE", f"/databases/{body['id']}", token=token)
            time.sleep(2)
            return
        if status != 503 or time.monotonic() > deadline:
            raise SystemExit(f"create failed: {status} {body}")
        time.sleep(1)


def create_all(n: int, per_account: int) -> tuple[list[float], list[tuple[str, dict]]]:
    """N databases, one after the other: latency to the first answer of each."""
    latencies, made = [], []
    token = ""
    run = str(int(time.time()))
    for i in range(n):
        if i % per_account == 0:
            token = sign_up(URL, f"fleet-{run}-{i}@example.com", "a long bench passphrase")
        if i == 0:
            _wait_for_hosts(sign_up(URL, f"fleet-{run}-warmup@example.com", "a long passphrase!"))
        started = time.perf_counter()
        status, body = api(URL, "POST", "/databases", {"name": f"f{i}"}, token=token)
        if status not in (201, 202):
            raise SystemExit(f"create failed: {status} {body}")
        deadline = time.monotonic() + 60
        while True:
            try:
                connect_select(body["connection_string"])
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        latencies.append((time.perf_counter() - started) * 1000)
        made.append((token, body))
    return latencies, made


def measure(hosts: int, n: int, per_account: int) -> dict[str, tuple[list[float], int]]:
    up = start(hosts)
    try:
        trust_platform_ca(URL)
        # The hosts register as they start (create_all waits for the first).
        time.sleep(5)
        created, made = create_all(n, per_account)
        spread = Counter(db["host"] for _t, db in made)
        print(f"{hosts} host(s): databases per host {dict(spread)}")
        results: dict[str, tuple[list[float], int]] = {"provision": (created, 0)}
        if refused := sleep_all(URL, made):
            print(f"{refused} could not be put to sleep")
        results["wake, one at a time"] = run_sequential(made)
        sleep_all(URL, made)
        results["wake, all at once"] = run_concurrent(made)
        return results
    finally:
        stop(up)
        os.environ.pop("PGSSLROOTCERT", None)  # the next platform has its own CA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--per-account", type=int, default=3, help="the plan's quota")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run it as root: three hosts means network namespaces")
    runs = {hosts: measure(hosts, args.n, args.per_account) for hosts in (1, 3)}
    print()
    print(f"{args.n} databases; milliseconds")
    print(f"{'':<22}{'1 host p50':>11}{'p95':>8}{'3 hosts p50':>13}{'p95':>8}{'ratio p50':>11}")
    for name in runs[1]:
        one, _ = runs[1][name]
        three, _ = runs[3][name]
        errors = runs[1][name][1] + runs[3][name][1]
        ratio = statistics.median(three) / statistics.median(one)
        print(
            f"{name:<22}{statistics.median(one):>11.0f}{percentile(one, 95):>8.0f}"
            f"{statistics.median(three):>13.0f}{percentile(three, 95):>8.0f}{ratio:>11.2f}"
            + (f"   ({errors} errors)" if errors else "")
        )


if __name__ == "__main__":
    main()
