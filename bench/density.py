#!/usr/bin/env python3
"""Density: one host grown to 100, 1,000, 5,000 and 10,000 databases, most of them
asleep as in a free tier, measured at each step (issue 15's figures).

As root, with nothing else running (it starts and stops a platform of its own: data,
control plane and Redis under var/bench-density/, web on port 8110, poolers from
6732):

    .venv/bin/pip install -e '.[bench]'        # matplotlib, for the plot
    .venv/bin/python bench/density.py [--steps 100,1000,5000,10000] [--awake 1000]

At each step, once the host has that many databases:

- creates: --creates databases through the API one after the other, each from the
  POST to its first `SELECT 1` answered through its PgBouncer (TLS, verify-full):
  p50 / p95; then put to sleep;
- stall: meanwhile a client of another database runs `SELECT 1` in a loop on one
  connection: its longest wait (and p99), each wait over 20 ms with its time; and
  the machine's major page faults and memory stall time (/proc/pressure/memory)
  over the creates (the same over each wake burst), and whose CPU it was (each
  process's, its reaped children's included, by its role in the platform);
- disk per database: the host's instances directory (du, shared template included)
  over the databases;
- periodic work: each periodic task in a process of its own, as a beat runs it
  (the control plane's reconcile list of a beat's slice, the host's reconcile
  toward it, the idle check, the usage walk), once to warm up (the worker has run
  it at every beat before) and then measured: CPU seconds (its own and its
  children's) and wall time;
- wakes: sleeping databases connected to one at a time (20), then 50 and 200 at
  once: p50 / p99, beside the CPU floor (N x measured CPU per wake / cores: the p99
  could not be lower with the cores busy all along);
- memory (at the last step, after its creates): --awake of the databases seeded
  asleep woken and left idle, and the creates measured again with them so; then the
  rest as above;
  the host's used memory (MemTotal - MemAvailable) with them awake and again once
  asleep, per database.

The databases beyond those measured are made by `manage.py seed_databases --asleep`
(as the API makes them, without the HTTP round trip). Results go to
var/bench-density.json (`--plot-only` redraws from it) and the plot to
docs/img/density.png.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR / "bench"))

from fleet import environment, start, stop  # noqa: E402
from provision import api, percentile, sign_up, trust_platform_ca  # noqa: E402
from wake import run_concurrent, run_sequential, used_memory_mb  # noqa: E402

DATA = BASE_DIR / "var" / "bench-density"
RESULTS = BASE_DIR / "var" / "bench-density.json"
HOLD = BASE_DIR / "var" / "bench-density.hold"
PLOT = BASE_DIR / "docs" / "img" / "density.png"
URL = "http://127.0.0.1:8110"
ENVIRONMENT = environment("density", DATA, web_port=8110, pooler_port=6732, netns_slot=51) | {
    "DBAAS_HOST_CAPACITY": "100000"
}
WAKE_POOL = 200
SLOW_MS = 20  # the stall probe's waits longer than this are kept with their time

# The host's side of each periodic task, in a process of its own.
TICK = """
import json, resource, time
from django.conf import settings
from tenants import backups, specs
from tenants.host import tasks
from tenants.models import Host

def cpu():
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)

def timed(call):
    cpu0, wall0 = cpu(), time.monotonic()
    result = call()
    return {"cpu_s": cpu() - cpu0, "wall_s": time.monotonic() - wall0, "result": str(result)[:200]}

host = Host.objects.get(name=settings.DBAAS_HOST_NAME)
out = {}

def reconcile(at):
    share = specs.reconcile_slice(host, at)  # as the beat does
    listed = {}
    made = timed(lambda: listed.update(
        tenants=specs.host_tenants(host, share), unfinished=backups.unfinished_on(host)))
    for _ in range(60):  # the worker's own reconcile may hold the lock for a moment
        tick = timed(lambda: tasks.host_reconcile(
            host.name, listed["tenants"], listed["unfinished"], time.time(), list(share)))
        if "skipped" not in tick["result"]:
            return made, tick
        time.sleep(1)
    raise SystemExit("the worker's reconcile held the lock for a minute")

# Each task once unmeasured, as the worker that runs it at every beat has run it
# before (what it keeps between ticks: parsed specs, rendered shards, admin
# sessions), then measured; reconcile with the next beat's slice.
reconcile(time.time())
out["reconcile list (control plane)"], out["reconcile (host)"] = reconcile(
    time.time() + settings.DBAAS_RECONCILE_INTERVAL)
for name, task in (("idle check (host)", tasks.instances_sleep_idle),
                   ("usage walk (host)", tasks.usage_record)):
    task(host.name)
    out[name] = timed(lambda: task(host.name))
print("TICK " + json.dumps(out))
"""


def manage(*args: str, timeout: float = 7200) -> str:
    env = os.environ | ENVIRONMENT
    proc = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise SystemExit(f"manage.py {args[0]} failed: {proc.stderr[-2000:]}")
    return proc.stdout


def cpu_busy_seconds() -> float:
    """CPU time this machine has spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def sleep_all(token: str, dbs: list[dict], url: str = URL) -> None:
    """Each put to sleep. Right after a burst of wakes the control plane may not
    have applied a database's wake report yet (it answers 409, still asleep as far
    as it knows): asked again a moment later."""
    for db in dbs:
        for _attempt in range(6):
            status, body = api(url, "POST", f"/databases/{db['id']}/sleep", token=token)
            if status != 409:
                break
            time.sleep(0.5)
        if status != 200 and body.get("state") != "sleeping":
            print(f"  sleep {db['name']}: {status} {body}")


def kernel_counters() -> dict[str, float]:
    """The machine's major page faults and the time tasks stalled on memory
    (/proc/pressure/memory: "some" task, or "full": all non-idle tasks), in ms."""
    out: dict[str, float] = {}
    for line in Path("/proc/vmstat").read_text().splitlines():
        if line.startswith("pgmajfault "):
            out["major_faults"] = int(line.split()[1])
    try:
        for line in Path("/proc/pressure/memory").read_text().splitlines():
            kind, *fields = line.split()
            total = dict(field.split("=") for field in fields)["total"]
            out[f"memory_{kind}_stall_ms"] = int(total) / 1000
    except FileNotFoundError:
        pass
    return out


TENANT_UID_BASE = 200000  # DBAAS_TENANT_UID_BASE: tenants' servers run as base + id
# What a process of the platform is, by a word of its command line (first match).
ROLES = (
    ("-Q control", "control-plane worker"),
    (".bulk ", "host bulk worker"),
    ("worker -Q host.", "host worker"),
    ("celery", "celery (other)"),
    ("run_activator", "activator"),
    ("run_registrar", "registrar"),
    ("run_pooler", "pooler supervisor"),
    ("run_exports", "exports"),
    ("gunicorn", "web (gunicorn)"),
    ("bench/density.py", "this bench"),
    ("localservices", "local services"),
)


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """Every process's CPU seconds, its own and its reaped children's (a backend's
    goes to its postmaster, a detached launch chain's to init), with what it is."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            uid = proc.stat().st_uid
        except (FileNotFoundError, ProcessLookupError):
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = sum(int(v) for v in fields[11:15]) / tick  # utime stime cutime cstime
        if comm.startswith("kdamond"):
            # This machine's proactive reclaim (DAMON, physical addresses, pageout),
            # set up with the machine: its checks walk every mapping of the pages it
            # samples, so it costs more the more server processes are awake.
            role = "kdamond (the machine's DAMON reclaim)"
        elif int(fields[1]) == 2 or proc.name == "2":
            role = "kernel threads"
        elif comm == "postgres":
            role = "tenant servers" if uid >= TENANT_UID_BASE else "control-plane postgres"
        elif proc.name == "1":
            # Its own work is the machine's (this machine's init is its agent);
            # what it reaped is the platform's detached launches.
            found[-1] = (
                "init (reaps detached launches)",
                sum(int(v) for v in fields[13:15]) / tick,
            )
            role, seconds = "the machine's init, its own work", seconds - found[-1][1]
        else:
            role = next((name for word, name in ROLES if word in cmdline), comm)
        found[int(proc.name)] = (role, seconds)
    return found


def cpu_by_role_since(before: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per role since `before` (processes that ran throughout or
    started since), largest first."""
    roles: dict[str, float] = {}
    for pid, (role, seconds) in cpu_by_process().items():
        spent = seconds - before[pid][1] if pid in before else seconds
        roles[role] = roles.get(role, 0.0) + spent
    return dict(sorted(((r, round(v, 2)) for r, v in roles.items() if v > 0), key=lambda x: -x[1]))


def counters_since(before: dict[str, float]) -> dict[str, float]:
    now = kernel_counters()
    return {key: now[key] - before[key] for key in before}


def create_timed(token: str, name: str) -> tuple[float, dict]:
    started = time.perf_counter()
    status, db = api(URL, "POST", "/databases", {"name": name}, token=token)
    if status != 201:
        raise SystemExit(f"create {name}: {status} {db}")
    with psycopg.connect(db["connection_string"], connect_timeout=60) as conn:
        conn.execute("SELECT 1").fetchone()
    return (time.perf_counter() - started) * 1000, db


def creates_with_stall(token: str, probe: dict, count: int, prefix: str) -> dict:
    """`count` creates through the API while a client of `probe` loops SELECT 1."""
    waits: list[float] = []
    slow: list[tuple[float, float]] = []
    stop_event = threading.Event()
    conn = psycopg.connect(probe["connection_string"], autocommit=True, connect_timeout=60)
    conn.execute("SELECT 1")  # awake now: its own wake is not a stall

    def loop() -> None:
        while not stop_event.is_set():
            began = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            waits.append((time.perf_counter() - began) * 1000)
            if waits[-1] > SLOW_MS:  # when, to line up with bench/pressure.sh's log
                slow.append((round(time.time(), 3), round(waits[-1], 1)))
            time.sleep(0.002)

    client = threading.Thread(target=loop)
    client.start()
    made, latencies = [], []
    counters, processes, busy = kernel_counters(), cpu_by_process(), cpu_busy_seconds()
    try:
        for n in range(count):
            ms, db = create_timed(token, f"{prefix}c{n}")
            latencies.append(ms)
            made.append(db)
    finally:
        stop_event.set()
        client.join()
        conn.close()
    during = counters_since(counters)
    by_role = cpu_by_role_since(processes)
    machine = cpu_busy_seconds() - busy
    sleep_all(token, made)
    return {
        "creates_cpu_s": machine,
        "creates_cpu_by_role": by_role,
        **{f"creates_{key}": value for key, value in during.items()},
        "stall_slow_samples": slow,
        "create_p50_ms": percentile(latencies, 50),
        "create_p95_ms": percentile(latencies, 95),
        "stall_max_ms": max(waits),
        "stall_p99_ms": percentile(waits, 99),
        "stall_queries": len(waits),
    }


def wakes(token: str, pool: list[dict]) -> dict:
    """Wake latency of sleeping databases: 20 one at a time, then 50 and (with a
    pool that large) 200 at once, each with its CPU floor."""
    cores = os.cpu_count() or 1
    out: dict[str, float] = {}
    one_by_one, _errors = run_sequential([(token, db) for db in pool[:20]])
    out["wake_one_p50_ms"] = percentile(one_by_one, 50)
    sleep_all(token, pool[:20])
    for n in (50, 200):
        if len(pool) < n:
            continue
        busy, own, counters = cpu_busy_seconds(), own_cpu_seconds(), kernel_counters()
        processes = cpu_by_process()
        latencies, errors = run_concurrent([(token, db) for db in pool[:n]])
        out[f"wake_{n}_cpu_by_role"] = cpu_by_role_since(processes)
        for key, value in counters_since(counters).items():
            out[f"wake_{n}_{key}"] = value
        # The platform's CPU per wake: the machine's, less this client's own.
        per_wake = ((cpu_busy_seconds() - busy) - (own_cpu_seconds() - own)) / n
        out[f"wake_{n}_p50_ms"] = percentile(latencies, 50)
        out[f"wake_{n}_p99_ms"] = percentile(latencies, 99)
        out[f"wake_{n}_errors"] = errors
        out[f"wake_{n}_cpu_ms"] = per_wake * 1000
        out[f"wake_{n}_floor_ms"] = n * per_wake * 1000 / cores
        sleep_all(token, pool[:n])
    return out


def disk_per_database(count: int) -> float:
    du = subprocess.run(
        ["du", "-sk", str(DATA / "instances")], capture_output=True, text=True, check=True
    )
    return int(du.stdout.split()[0]) / 1024 / count


# Put every seeded database that runs to sleep; print how many there were.
SLEEP_SEEDED = """
import time
from tenants import services
from tenants.models import Tenant
running = list(Tenant.objects.filter(state="running", name__startswith="seed"))
for tenant in running:
    services.tenant_sleep(tenant=tenant, actor="bench")
deadline = time.monotonic() + 1800
while Tenant.objects.filter(state="running", name__startswith="seed").exists():
    assert time.monotonic() < deadline, "seeded databases still running"
    time.sleep(1)
print("SLEPT", len(running))
"""


WAKE_SEEDED = """
import time
from tenants import services
from tenants.models import Tenant
seeded = Tenant.objects.filter(state="sleeping", name__startswith="seed").order_by("-pk")
woken = [tenant.pk for tenant in seeded[:{count}]]
for tenant in Tenant.objects.filter(pk__in=woken):
    services.tenant_wake(tenant=tenant, actor="bench")
deadline = time.monotonic() + 3600
while Tenant.objects.filter(pk__in=woken).exclude(state="running").exists():
    assert time.monotonic() < deadline, "woken databases still not running"
    time.sleep(1)
print("WOKE", len(woken))
"""


def wake_seeded(count: int) -> float:
    """Wake `count` of the databases seeded asleep, left awake and idle (their plan's
    idle timeout is a day); the used memory then (MB)."""
    manage("shell", "-c", WAKE_SEEDED.format(count=int(count)))
    time.sleep(10)
    return used_memory_mb()


def memory_per_awake(awake_mb: float) -> dict:
    """Put the awake seeded databases to sleep; what each took awake."""
    out = manage("shell", "-c", SLEEP_SEEDED)
    count = int([x for x in out.splitlines() if x.startswith("SLEPT ")][-1].split()[1])
    time.sleep(10)
    return {"awake": count, "memory_per_awake_mb": (awake_mb - used_memory_mb()) / count}


def tick() -> dict:
    out = manage("shell", "-c", TICK)
    line = [x for x in out.splitlines() if x.startswith("TICK ")][-1]
    return json.loads(line.removeprefix("TICK "))


def hold_here(step: int) -> None:
    """Leave the grown platform up for looking at, until the hold file is removed."""
    HOLD.write_text(f"{step}\n")
    print(f"step {step}: holding (platform at {URL}); rm {HOLD} to go on", flush=True)
    while HOLD.exists():
        time.sleep(1)


def run(steps: list[int], creates: int, awake: int, hold: bool = False) -> list[dict]:
    trust_platform_ca(URL)
    token = sign_up(URL, "density@bench.invalid", "a long bench passphrase")
    # One account makes them all; awake databases stay awake until put to sleep
    # (the seeded ones take the free plan's settings as they are now).
    manage(
        "shell",
        "-c",
        "from tenants.models import Plan; Plan.objects.filter(name='free')"
        ".update(max_databases=1000000, idle_timeout_seconds=86400)",
    )
    made = 0
    _ms, probe = create_timed(token, "probe")
    pool = [create_timed(token, f"pool{n}")[1] for n in range(50)]
    made += 1 + len(pool)
    sleep_all(token, pool)
    rows = []
    for step in steps:
        began = time.monotonic()
        if step >= 1000 and len(pool) < WAKE_POOL:
            more = [create_timed(token, f"pool{n}")[1] for n in range(len(pool), WAKE_POOL)]
            sleep_all(token, more)
            pool += more
            made += len(more)
        row: dict = {}
        # At the last step, after its creates, --awake of those seeded are woken and
        # left idle (and stay so for the rest of the step: creates again, wakes,
        # memory): the creates are measured at the step's count with few awake, and
        # with that many awake.
        awake_now = awake if step == steps[-1] and step - made - 2 * creates >= awake else 0
        seed = step - made - creates - (creates if awake_now else 0)
        if seed > 0:
            print(f"step {step}: seeding {seed} asleep", flush=True)
            manage("seed_databases", str(seed), "--asleep", "--batch", "200", "--timeout", "14400")
            made += seed
        if hold and step == steps[-1]:
            hold_here(step)
        row |= creates_with_stall(token, probe, creates, f"s{step}")
        row["creates_at"] = made
        made += creates
        if awake_now:
            # The same again with --awake of them awake and idle (and, on this
            # machine, its DAMON reclaim busier for their processes).
            print(f"step {step}: waking {awake_now} of those seeded", flush=True)
            awake_mb = wake_seeded(awake_now)
            row["with_awake"] = creates_with_stall(token, probe, creates, f"s{step}a")
            row["with_awake"]["creates_at"] = made
            made += creates
        row["databases"] = made
        row["disk_per_database_mb"] = disk_per_database(made)
        row["tick"] = tick()
        row |= wakes(token, pool)
        if awake_now:
            row |= memory_per_awake(awake_mb)
        row["step_s"] = time.monotonic() - began
        print(json.dumps(row), flush=True)
        rows.append(row)
        RESULTS.write_text(json.dumps(rows, indent=1))
    return rows


def table(rows: list[dict]) -> None:
    print(
        f"\n{'databases':>9} {'create p50':>10} {'p95':>6} {'stall max':>9} {'p99':>6} "
        f"{'disk/db MB':>10} {'reconcile cpu s':>15} {'idle cpu s':>10} {'usage cpu s':>11} "
        f"{'wake 1 p50':>10} {'50: p99':>8} {'floor':>6} {'200: p99':>8} {'floor':>6}"
    )
    for r in rows:
        t = r["tick"]
        print(
            f"{r['databases']:>9} {r['create_p50_ms']:>10.0f} {r['create_p95_ms']:>6.0f} "
            f"{r['stall_max_ms']:>9.1f} {r['stall_p99_ms']:>6.1f} "
            f"{r['disk_per_database_mb']:>10.2f} "
            f"{t['reconcile (host)']['cpu_s']:>15.2f} {t['idle check (host)']['cpu_s']:>10.2f} "
            f"{t['usage walk (host)']['cpu_s']:>11.2f} {r['wake_one_p50_ms']:>10.0f} "
            f"{r.get('wake_50_p99_ms', 0):>8.0f} {r.get('wake_50_floor_ms', 0):>6.0f} "
            f"{r.get('wake_200_p99_ms', 0):>8.0f} {r.get('wake_200_floor_ms', 0):>6.0f}"
        )
    for r in rows:
        if "with_awake" in r:
            w = r["with_awake"]
            print(
                f"{r['databases']:>9} databases: creates at {r['creates_at']} with few awake "
                f"p50/p95 {r['create_p50_ms']:.0f}/{r['create_p95_ms']:.0f} ms; at "
                f"{w['creates_at']} with {r['awake']} awake {w['create_p50_ms']:.0f}/"
                f"{w['create_p95_ms']:.0f} ms, stall max/p99 {w['stall_max_ms']:.1f}/"
                f"{w['stall_p99_ms']:.1f} ms"
            )
    for r in rows:
        if "creates_major_faults" in r:
            print(
                f"{r['databases']:>9} databases: over the creates "
                f"{r['creates_major_faults']:.0f} major faults, memory stall some/full "
                f"{r.get('creates_memory_some_stall_ms', 0):.0f}/"
                f"{r.get('creates_memory_full_stall_ms', 0):.0f} ms; 50 wakes at once "
                f"{r.get('wake_50_major_faults', 0):.0f} major faults, "
                f"{r.get('wake_50_cpu_ms', 0):.0f} ms CPU per wake"
            )
    for r in rows:
        w = r.get("with_awake", {})
        for what, machine, roles in (
            ("creates", r.get("creates_cpu_s"), r.get("creates_cpu_by_role")),
            ("creates with the awake", w.get("creates_cpu_s"), w.get("creates_cpu_by_role")),
            ("50 wakes", None, r.get("wake_50_cpu_by_role")),
        ):
            if roles:
                top = ", ".join(f"{role} {sec:.1f}" for role, sec in list(roles.items())[:7])
                total = f" of the machine's {machine:.1f}" if machine else ""
                print(f"{r['databases']:>9} databases, CPU s over the {what}{total}: {top}")
    for r in rows:
        if "memory_per_awake_mb" in r:
            print(
                f"host memory per awake idle database, {r['awake']} awake: "
                f"{r['memory_per_awake_mb']:.2f} MB"
            )


def plot(rows: list[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: .venv/bin/pip install -e '.[bench]' for matplotlib")
        return
    n = [r["databases"] for r in rows]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    panels = [
        (
            "Create through the API (ms)",
            [
                ("p50", "create_p50_ms"),
                ("p95", "create_p95_ms"),
                ("p50, 1,000 more awake", "with_awake.create_p50_ms"),
            ],
        ),
        (
            "Another client's SELECT 1 meanwhile (ms)",
            [("max", "stall_max_ms"), ("p99", "stall_p99_ms")],
        ),
        ("Disk per database (MB)", [("du / databases", "disk_per_database_mb")]),
        ("Wake, 50 at once (ms)", [("p99", "wake_50_p99_ms"), ("CPU floor", "wake_50_floor_ms")]),
        (
            "Wake, 200 at once (ms)",
            [("p99", "wake_200_p99_ms"), ("CPU floor", "wake_200_floor_ms")],
        ),
    ]
    for ax, (title, series) in zip(axes.flat, panels, strict=False):
        for label, key in series:
            where, _, leaf = key.rpartition(".")  # "with_awake.x": r["with_awake"]["x"]
            found = [(x, r.get(where, {}) if where else r) for x, r in zip(n, rows, strict=True)]
            points = [(x, r[leaf]) for x, r in found if leaf in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        ax.set_title(title)
        ax.set_xscale("log")
        ax.set_xlabel("databases on the host")
        ax.legend()
    ax = axes.flat[5]
    for task in ("reconcile (host)", "idle check (host)", "usage walk (host)"):
        ax.plot(n, [r["tick"][task]["cpu_s"] for r in rows], marker="o", label=task)
    ax.set_title("CPU per periodic tick (s)")
    ax.set_xscale("log")
    ax.set_xlabel("databases on the host")
    ax.legend()
    fig.suptitle(f"bench/density.py, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=80)
    print(f"plot: {PLOT.relative_to(BASE_DIR)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="100,1000,5000,10000")
    parser.add_argument("--creates", type=int, default=50, help="measured creates per step")
    parser.add_argument("--awake", type=int, default=1000, help="awake for the memory figure")
    parser.add_argument(
        "--hold", action="store_true", help="before the last step's creates, wait (to profile)"
    )
    parser.add_argument("--plot-only", action="store_true", help=f"redraw from {RESULTS.name}")
    args = parser.parse_args()
    if args.plot_only:
        rows = json.loads(RESULTS.read_text())
    else:
        if os.geteuid() != 0:
            raise SystemExit("run it as root (the platform's sandboxes need it)")
        shutil.rmtree(DATA, ignore_errors=True)
        up = start(1, DATA, ENVIRONMENT, URL)
        try:
            steps = [int(x) for x in args.steps.split(",")]
            rows = run(steps, args.creates, args.awake, args.hold)
        finally:
            stop(up)
    table(rows)
    plot(rows)


if __name__ == "__main__":
    main()
