#!/usr/bin/env python3
"""Wake-on-connect latency and the memory sleeping saves, against a running platform.

Start the platform (`make run`), then on the same machine:

    .venv/bin/python bench/wake.py [-n 50] [--url http://127.0.0.1:8000]

Creates N databases, then measures connect + `SELECT 1` through PgBouncer (TLS,
SCRAM) for each: awake (the baseline), asleep one at a time, and asleep all at
once. Also reports the host's used memory (MemTotal - MemAvailable) with all N
awake and all N asleep. The databases are deleted at the end unless --keep.
"""

import argparse
import statistics
import threading
import time

import psycopg

# Same folder: the shared API client.
from provision import api, percentile, sign_up, trust_platform_ca


def connect_select(url: str) -> float:
    started = time.perf_counter()
    with psycopg.connect(url, connect_timeout=60) as conn:
        conn.execute("SELECT 1").fetchone()
    return (time.perf_counter() - started) * 1000


def used_memory_mb() -> float:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            info[key] = int(value.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


def sleep_all(base: str, dbs: list[tuple[str, dict]]) -> int:
    refused = 0
    for token, db in dbs:
        status, _ = api(base, "POST", f"/databases/{db['id']}/sleep", token=token)
        refused += status != 200
    return refused


def run_sequential(dbs: list[tuple[str, dict]]) -> tuple[list[float], int]:
    latencies, errors = [], 0
    for _token, db in dbs:
        try:
            latencies.append(connect_select(db["connection_string"]))
        except psycopg.Error as exc:
            errors += 1
            print(f"error: {exc}")
    return latencies, errors


def run_concurrent(dbs: list[tuple[str, dict]]) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors: list[str] = []
    barrier = threading.Barrier(len(dbs))

    def one(url: str) -> None:
        barrier.wait()
        try:
            latencies.append(connect_select(url))
        except psycopg.Error as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=one, args=(db["connection_string"],)) for _t, db in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in errors:
        print(f"error: {e}")
    return latencies, len(errors)


def row(name: str, latencies: list[float], errors: int) -> str:
    if not latencies:
        return f"{name:<34}{'-':>9}{'-':>9}{'-':>9}{'-':>9}{errors:>8}"
    return (
        f"{name:<34}{statistics.median(latencies):>9.1f}{percentile(latencies, 95):>9.1f}"
        f"{percentile(latencies, 99):>9.1f}{max(latencies):>9.1f}{errors:>8}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--per-account", type=int, default=3, help="the plan's quota")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    trust_platform_ca(args.url)

    run = str(int(time.time()))
    dbs: list[tuple[str, dict]] = []
    token = ""
    for i in range(args.n):
        if i % args.per_account == 0:
            token = sign_up(args.url, f"wake-{run}-{i}@example.com", f"bench password {run}")
        status, body = api(args.url, "POST", "/databases", {"name": f"w{i}"}, token)
        if status != 201:
            raise SystemExit(f"create failed: {status} {body}")
        dbs.append((token, body))
    try:
        awake, awake_errors = run_sequential(dbs)
        time.sleep(1)
        mem_awake = used_memory_mb()
        refused = sleep_all(args.url, dbs)
        time.sleep(1)
        mem_asleep = used_memory_mb()
        seq, seq_errors = run_sequential(dbs)
        refused += sleep_all(args.url, dbs)
        conc, conc_errors = run_concurrent(dbs)
    finally:
        if not args.keep:
            for tok, db in dbs:
                api(args.url, "DELETE", f"/databases/{db['id']}", token=tok)

    print()
    print(f"bench/wake.py: N={args.n}, connect + SELECT 1 through PgBouncer (ms)")
    print(f"{'scenario':<34}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'errors':>8}")
    print(row("awake (baseline)", awake, awake_errors))
    print(row("asleep, one at a time", seq, seq_errors))
    print(row(f"asleep, all {args.n} at once", conc, conc_errors))
    print(f"sleep requests refused: {refused}")
    print(
        f"host memory used: all awake {mem_awake:.0f} MB, all asleep {mem_asleep:.0f} MB "
        f"({(mem_awake - mem_asleep) / args.n:.1f} MB per tenant)"
    )


if __name__ == "__main__":
    main()
