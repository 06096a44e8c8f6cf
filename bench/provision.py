#!/usr/bin/env python3
"""Provisioning latency and idle memory, through the real API of a running platform.

Start the platform (`make run`) first, then, as root on the same machine:

    .venv/bin/python bench/provision.py [-n 50] [--url http://127.0.0.1:8000]

For each of N databases: time from the POST /api/v1/databases request to the
first `SELECT 1` answered through PgBouncer with the returned connection string.
Then, with all of them idle, the proportional set size (PSS) of each tenant's
processes. Accounts are made as needed (the free plan allows 3 databases each);
the databases are deleted at the end unless --keep is given.
"""

import argparse
import json
import os
import secrets
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg


def api(base: str, method: str, path: str, body=None, token=None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{base}/api/v1{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def sign_up(base: str, email: str, password: str) -> str:
    """A new account's token. Benchmarks make many accounts from one address: run
    the platform with DBAAS_SIGNUPS_PER_IP_HOUR raised (see docs/benchmarks.md)."""
    status, body = api(base, "POST", "/accounts", {"email": email, "password": password})
    if status == 429:
        raise SystemExit(
            "sign-up refused by the per-address limit: start the platform with "
            "DBAAS_SIGNUPS_PER_IP_HOUR=100000 make run"
        )
    if status != 201:
        raise SystemExit(f"sign-up failed: {status} {body}")
    return body["token"]


def trust_platform_ca(base: str) -> None:
    """Connection strings say sslmode=verify-full: trust the platform's CA for this
    run (unless PGSSLROOTCERT names one already), as `dbaas trust` does for users."""
    if os.environ.get("PGSSLROOTCERT"):
        return
    with urllib.request.urlopen(f"{base}/api/v1/ca.pem", timeout=30) as response:
        pem = response.read()
    fd, path = tempfile.mkstemp(prefix="dbaas-ca-", suffix=".pem")
    os.write(fd, pem)
    os.close(fd)
    os.environ["PGSSLROOTCERT"] = path


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def pss_kb_of_uid(uid: int) -> tuple[int, int]:
    """Total PSS (kB) and process count of every process running as `uid`."""
    total = count = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if proc.stat().st_uid != uid:
                continue
            for line in (proc / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    count += 1
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return total, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="databases to create (default 50)")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--per-account", type=int, default=3, help="the plan's quota")
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before PSS")
    parser.add_argument("--keep", action="store_true", help="do not delete the databases")
    args = parser.parse_args()
    trust_platform_ca(args.url)

    run = secrets.token_hex(3)
    tokens: list[str] = []
    created: list[tuple[str, dict]] = []
    latencies: list[float] = []
    errors = 0
    for i in range(args.n):
        if i % args.per_account == 0:
            tokens.append(
                sign_up(args.url, f"bench-{run}-{i}@example.com", f"bench password {run}")
            )
        token = tokens[-1]
        started = time.perf_counter()
        status, body = api(args.url, "POST", "/databases", {"name": f"b{i}"}, token)
        if status != 201:
            errors += 1
            print(f"create {i}: {status} {body}")
            continue
        with psycopg.connect(body["connection_string"], connect_timeout=30) as conn:
            conn.execute("SELECT 1").fetchone()
        latencies.append((time.perf_counter() - started) * 1000)
        created.append((token, body))

    time.sleep(args.settle)
    uid_base = int(os.environ.get("DBAAS_TENANT_UID_BASE", "200000"))
    pss = []
    procs = []
    if os.geteuid() == 0:
        for _token, body in created:
            kb, count = pss_kb_of_uid(uid_base + body["id"])
            if count:
                pss.append(kb / 1024)
                procs.append(count)

    print()
    print(f"bench/provision.py: {len(created)} databases created, {errors} errors")
    print(f"{'metric':<44}{'p50':>10}{'p95':>10}{'max':>10}")
    if latencies:
        print(
            f"{'POST -> first SELECT 1 via PgBouncer (ms)':<44}"
            f"{statistics.median(latencies):>10.1f}{percentile(latencies, 95):>10.1f}"
            f"{max(latencies):>10.1f}"
        )
    if pss:
        print(
            f"{'idle PSS per tenant (MB)':<44}{statistics.median(pss):>10.2f}"
            f"{percentile(pss, 95):>10.2f}{max(pss):>10.2f}"
        )
        print(f"{'processes per tenant':<44}{statistics.median(procs):>10.0f}")
    elif os.geteuid() != 0:
        print("(run as root to measure PSS of the tenants' processes)")

    if not args.keep:
        for token, body in created:
            api(args.url, "DELETE", f"/databases/{body['id']}", token=token)


if __name__ == "__main__":
    main()
