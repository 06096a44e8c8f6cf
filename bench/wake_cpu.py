#!/usr/bin/env python3
"""Where the CPU of a wake goes: N sleeping databases woken (connect + `SELECT 1`),
the CPU time of every process of the platform over the wakes, grouped by part.

As root, with nothing else running (a platform of its own: data under
var/bench-wake-cpu/, web on port 8120, poolers from 6832):

    .venv/bin/python bench/wake_cpu.py [-n 50] [--rounds 3]

Each round: all N asleep, then woken all at once. For each process alive at the
end, its CPU (user + system, with that of the children it reaped) less what it had
at the start; processes that ended meanwhile count in their parent's. What no
living process accounts for (processes reaped by init, the kernel's own work) is
"other": the machine's busy time less the rest. Printed per wake, in ms.
"""

import argparse
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR / "bench"))

from density import cpu_busy_seconds, sleep_all  # noqa: E402
from fleet import environment, start, stop  # noqa: E402
from provision import api, sign_up, trust_platform_ca  # noqa: E402
from wake import run_concurrent  # noqa: E402

DATA = BASE_DIR / "var" / "bench-wake-cpu"
URL = "http://127.0.0.1:8120"
ENVIRONMENT = environment("wakecpu", DATA, web_port=8120, pooler_port=6832, netns_slot=52)
TENANT_UID_BASE = 200000
TICK = os.sysconf("SC_CLK_TCK")


def part_of(pid: int, uid: int, cmdline: str) -> str:
    """Which part of the platform a process is."""
    if uid >= TENANT_UID_BASE:
        return "tenant servers (postgres)"
    if cmdline.startswith("bwrap"):
        return "sandboxes (bwrap)"
    if pid == os.getpid():
        return "the bench's clients (TLS, SCRAM)"
    for needle, part in (
        ("run_activator", "activator (with the launch commands it waits for)"),
        ("pgbouncer", "pgbouncers"),
        ("-Q host.", "host agent workers"),
        ("-Q control", "control plane worker (reports)"),
        ("gunicorn", "web"),
        ("redis", "redis"),
        ("celery", "other celery"),
        ("postgres", "control plane postgres"),
    ):
        if needle in cmdline:
            return part
    return "other processes"


def snapshot() -> dict[int, tuple[str, float]]:
    """CPU seconds (with reaped children) of each process, with its part."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            uid = os.stat(f"/proc/{pid}").st_uid
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        # Fields 14-17 (utime, stime, cutime, cstime) are 11-14 after the name.
        cpu = sum(int(x) for x in stat[11:15]) / TICK
        found[pid] = (part_of(pid, uid, cmdline.strip()), cpu)
    return found


def measure(token: str, dbs: list[dict]) -> tuple[dict[str, float], float, int]:
    """One round: all asleep, then woken at once; CPU seconds by part, the machine's
    busy seconds, errors."""
    sleep_all(token, dbs, URL)
    time.sleep(2)
    before, busy = snapshot(), cpu_busy_seconds()
    _latencies, errors = run_concurrent([(token, db) for db in dbs])
    time.sleep(1)  # reports applied, connections closed
    after, busy = snapshot(), cpu_busy_seconds() - busy
    parts: dict[str, float] = defaultdict(float)
    for pid, (part, cpu) in after.items():
        parts[part] += cpu - (before[pid][1] if pid in before else 0.0)
    parts["other (reaped by init, kernel)"] = busy - sum(parts.values())
    return parts, busy, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run it as root (the platform's sandboxes need it)")
    up = start(1, DATA, ENVIRONMENT, URL)
    try:
        trust_platform_ca(URL)
        token = sign_up(URL, "wake-cpu@bench.invalid", "a long bench passphrase")
        subprocess.run(
            [
                sys.executable,
                "manage.py",
                "shell",
                "-c",
                "from tenants.models import Plan; Plan.objects.filter(name='free')"
                ".update(max_databases=100000, idle_timeout_seconds=86400)",
            ],
            cwd=BASE_DIR,
            env=os.environ | ENVIRONMENT,
            check=True,
            capture_output=True,
        )
        dbs = []
        for n in range(args.n):
            status, db = api(URL, "POST", "/databases", {"name": f"w{n}"}, token=token)
            if status != 201:
                raise SystemExit(f"create failed: {status} {db}")
            dbs.append(db)
        rounds = [measure(token, dbs) for _ in range(args.rounds)]
    finally:
        stop(up)
    print(f"\nbench/wake_cpu.py: {args.n} sleeping databases woken at once, {args.rounds} rounds")
    print(f"CPU ms per wake, median of the rounds ({os.cpu_count()} cores)")

    def median_ms(values: list[float]) -> float:
        ordered = sorted(v * 1000 / args.n for v in values)
        return ordered[len(ordered) // 2]

    names = {name for parts, _busy, _errors in rounds for name in parts}
    table = {name: median_ms([r[0].get(name, 0.0) for r in rounds]) for name in names}
    for name, ms in sorted(table.items(), key=lambda item: -item[1]):
        print(f"  {name:<52} {ms:>7.1f}")
    print(f"  {'all (the machine busy)':<52} {median_ms([r[1] for r in rounds]):>7.1f}")
    print(f"errors: {[r[2] for r in rounds]}")


if __name__ == "__main__":
    main()
