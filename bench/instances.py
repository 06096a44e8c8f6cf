#!/usr/bin/env python3
"""What one tenant's instance costs the host, at many instances: disk per sleeping
instance, memory per awake idle instance, and the CPU and time of one start (a
wake without the pooler and activator), for sets of PostgreSQL settings side by
side. It drives the sandbox runtime directly (no control plane, no pooler), on a
scratch directory, with the image `manage.py build_image` made.

As root: .venv/bin/python bench/instances.py [-n 200] [--profiles current,small]
                                            [--cgroups] [--bare]

For each profile: N instances are made (as provisioning makes them), started one
at a time (the start's wall time and the whole machine's CPU time during it), left
idle, then measured: PSS of every process of each instance (/proc/PID/smaps_rollup,
its own uid's processes and its bubblewrap), the host's used memory (MemTotal -
MemAvailable) against before; then stopped (asleep) and measured on disk (the
blocks of the instance's own layer, or of its plain copy). All is removed at the end.

--cgroups gives each instance its cgroups (a free plan's limits), as the platform
does. --ksm then measures the same servers again once the kernel has merged their
identical private pages (KSM: every process of theirs opted in with
PR_SET_MEMORY_MERGE, which fork and exec keep; ksmd scanning fast until three
full scans have passed), with the CPU ksmd took and the pages it shares; KSM's
settings are put back afterwards. --bare adds, for each profile, the same servers
without any sandbox: the host's own postgres binary run as each uid on a plain
copy of the template, no namespaces, no cgroups, the platform's module not
loaded: what one PostgreSQL server per tenant costs this host before any
isolation.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dbaas.settings")
import django  # noqa: E402

django.setup()

from tenants.host.spec import postgres_config  # noqa: E402
from tenants.models import Plan  # noqa: E402
from unikernel_images.cgroups import Limits  # noqa: E402
from unikernel_images.image import default_image_name, load_image  # noqa: E402
from unikernel_images.paths import images_dir  # noqa: E402
from unikernel_images.runtimes.base import InstanceSpec, allocated_bytes  # noqa: E402
from unikernel_images.runtimes.sandbox import SandboxRuntime  # noqa: E402

# PostgreSQL settings per profile, over the image's postgresql.conf.
# PostgreSQL settings per profile, over the image's postgresql.conf; "free" is what
# the free plan sets (Plan.FREE_POSTGRES_SETTINGS).
PROFILES: dict[str, dict[str, str]] = {
    "current": {},
    "small": {"shared_buffers": "2MB", "wal_buffers": "256kB", "autovacuum_naptime": "5min"},
    "free": Plan.FREE_POSTGRES_SETTINGS,
    "no-autovacuum": {
        "shared_buffers": "1MB",
        "wal_buffers": "64kB",
        "max_locks_per_transaction": "16",
        "autovacuum": "off",
    },
}
UID_BASE = 390000  # apart from the platform's tenants' (DBAAS_TENANT_UID_BASE)


def memory_used_kb() -> int:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            info[key] = int(value.split()[0])
    return info["MemTotal"] - info["MemAvailable"]


def cpu_seconds() -> float:
    """The whole machine's busy CPU time (user + system and the rest, not idle)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def processes_by_uid(uids: set[int]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            uid = proc.stat().st_uid
        except FileNotFoundError:
            continue
        if uid in uids:
            found.setdefault(uid, []).append(int(proc.name))
    return found


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def bwrap_of(pids: list[int]) -> list[int]:
    """The bubblewrap process above an instance's processes (root's, so not in
    its uid's list)."""
    parents = set()
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        try:
            if Path(f"/proc/{ppid}/comm").read_text().strip() == "bwrap":
                parents.add(ppid)
        except FileNotFoundError:
            continue
    return sorted(parents)


def summary(
    creates: list[float],
    starts: list[float],
    cpus: list[float],
    counts: list[int],
    per_instance: list[int],
    host_kb: float,
    disks: list[float],
) -> dict[str, float]:
    """One row: times in ms, memory in MB (from kB), medians over the instances;
    the start time of the first and last tenth shows what the ones running cost."""
    tenth = max(1, len(starts) // 10)
    return {
        "create ms p50": statistics.median(creates),
        "start ms p50": statistics.median(starts),
        "first 10% start ms p50": statistics.median(starts[:tenth]),
        "last 10% start ms p50": statistics.median(starts[-tenth:]),
        "start CPU ms p50": statistics.median(cpus),
        "processes": statistics.median(counts) if counts else 0,
        "PSS MB p50": statistics.median(per_instance) / 1024 if per_instance else 0,
        "host MB each": host_kb / 1024,
        "disk asleep MB p50": statistics.median(disks) / 1024,
    }


KSM = Path("/sys/kernel/mm/ksm")
PR_SET_MEMORY_MERGE = 67


def merge_identical_pages_of_children() -> None:
    """Every process started from here on (fork and exec keep it) offers its
    private pages to KSM."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0:
        raise SystemExit(f"PR_SET_MEMORY_MERGE: {os.strerror(ctypes.get_errno())}")


def ksm_read(name: str) -> int:
    return int((KSM / name).read_text().split()[0])


def kernel_thread_cpu_s(name: str) -> float:
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == name:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (FileNotFoundError, ProcessLookupError):
            continue
    return 0.0


def merged(before_kb: int, pids: list[list[int]], n: int) -> dict[str, float]:
    """Let ksmd merge the running servers' identical pages (fast: it is a bench),
    wait for three full scans, measure; KSM's settings as they were afterwards."""
    saved = {name: (KSM / name).read_text().strip() for name in ("run", "pages_to_scan")}
    cpu = kernel_thread_cpu_s("ksmd")
    began = time.monotonic()
    try:
        (KSM / "pages_to_scan").write_text("20000")
        scans = ksm_read("full_scans")
        (KSM / "run").write_text("1")
        while ksm_read("full_scans") < scans + 3:
            time.sleep(1)
        settled_s = time.monotonic() - began
        out = {
            "KSM: PSS MB p50": statistics.median(sum(pss_kb(p) for p in every) for every in pids)
            / 1024,
            "KSM: host MB each": (memory_used_kb() - before_kb) / n / 1024,
            "KSM: pages saved MB each": ksm_read("pages_sharing") * 4 / 1024 / n,
            "KSM: ksmd CPU s": kernel_thread_cpu_s("ksmd") - cpu,
            "KSM: settled s": settled_s,
        }
    finally:
        (KSM / "run").write_text("2")  # unmerge all: the next measurement starts from none
        (KSM / "pages_to_scan").write_text(saved["pages_to_scan"])
        (KSM / "run").write_text(saved["run"])
    return out


def run(
    profile: str, n: int, root: Path, with_cgroups: bool = False, ksm: bool = False
) -> dict[str, float]:
    image = load_image(images_dir(), default_image_name())
    runtime = SandboxRuntime(root)
    memory_mb = Plan._meta.get_field("memory_limit_mb").get_default()  # a plan's default
    limits = Limits(memory_bytes=memory_mb << 20, cpus=1.0, processes=64) if with_cgroups else None
    specs = [
        InstanceSpec(
            instance_id=f"b{i}",
            image=image,
            uid=UID_BASE + i,
            socket_group=None,
            max_connections=25,
            logins=(("all", "bench"),),
            platform_accounts=("root",),
            extra_settings=postgres_config(PROFILES[profile]),
            limits=limits,
        )
        for i in range(n)
    ]
    before = memory_used_kb()
    starts, cpus, creates = [], [], []
    try:
        for spec in specs:
            began = time.perf_counter()
            runtime.create(spec)
            creates.append((time.perf_counter() - began) * 1000)
            cpu, began = cpu_seconds(), time.perf_counter()
            runtime.start(spec)
            starts.append((time.perf_counter() - began) * 1000)
            cpus.append((cpu_seconds() - cpu) * 1000)
        time.sleep(5)  # idle: start-up work done
        by_uid = processes_by_uid({spec.uid for spec in specs if spec.uid is not None})
        # Each instance's processes, its bubblewrap's included.
        instances = [pids + bwrap_of(pids) for pids in by_uid.values()]
        counts = [len(every) for every in instances]
        per_instance = [sum(pss_kb(pid) for pid in every) for every in instances]
        host = (memory_used_kb() - before) / n
        with_ksm = merged(before, instances, n) if ksm else {}
        for spec in specs:
            runtime.stop(spec.instance_id)
        disks = []
        for spec in specs:
            layer = runtime.instance_dir(spec.instance_id) / "layer" / "upper"
            own = layer if layer.exists() else runtime.data_dir(spec.instance_id)
            disks.append(allocated_bytes(own) / 1024)
    finally:
        for spec in specs:
            runtime.destroy(spec.instance_id)
    return summary(creates, starts, cpus, counts, per_instance, host, disks) | with_ksm


def run_bare(profile: str, n: int, root: Path) -> dict[str, float]:
    """The same servers with no sandbox at all (see --bare)."""
    image = load_image(images_dir(), default_image_name())
    postgres = image.postgres  # the host's own binary: the image holds a copy of it
    settings = {
        **postgres_config(PROFILES[profile]),
        "shared_preload_libraries": "''",
        "max_connections": "25",
    }
    servers: list[tuple[int, Path, subprocess.Popen]] = []
    before = memory_used_kb()
    starts, cpus, creates = [], [], []
    try:
        for i in range(n):
            uid = UID_BASE + i
            data, sockets = root / f"b{i}" / "data", root / f"b{i}" / "run"
            began = time.perf_counter()
            shutil.copytree(image.template, data, symlinks=True)
            sockets.mkdir()
            subprocess.run(["chown", "-R", f"{uid}:{uid}", str(root / f"b{i}")], check=True)
            os.chmod(root / f"b{i}", 0o711)
            creates.append((time.perf_counter() - began) * 1000)
            options = [f"-c{name}={value.strip(chr(39))}" for name, value in settings.items()]
            cpu, began = cpu_seconds(), time.perf_counter()
            server = subprocess.Popen(
                [
                    "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
                    str(postgres), "-D", str(data), f"-cunix_socket_directories={sockets}",
                    "-clisten_addresses=", *options,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            servers.append((uid, data, server))
            while (
                not (data / "postmaster.pid").exists()
                or "ready" not in (data / "postmaster.pid").read_text()
            ):
                if server.poll() is not None:
                    raise SystemExit(f"bare postgres {i} exited ({server.returncode})")
                time.sleep(0.002)
            starts.append((time.perf_counter() - began) * 1000)
            cpus.append((cpu_seconds() - cpu) * 1000)
        time.sleep(5)
        by_uid = processes_by_uid({uid for uid, _, _ in servers})
        counts = [len(pids) for pids in by_uid.values()]
        per_instance = [sum(pss_kb(pid) for pid in pids) for pids in by_uid.values()]
        host = (memory_used_kb() - before) / n
    finally:
        for _uid, _data, server in servers:
            server.send_signal(signal.SIGINT)
        for _uid, _data, server in servers:
            server.wait(timeout=60)
    disks = [allocated_bytes(data) / 1024 for _uid, data, _ in servers]
    return summary(creates, starts, cpus, counts, per_instance, host, disks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--profiles", default="current,small,free,no-autovacuum")
    parser.add_argument("--cgroups", action="store_true", help="each instance in its cgroups")
    parser.add_argument("--bare", action="store_true", help="and each profile with no sandbox")
    parser.add_argument("--ksm", action="store_true", help="and again once KSM has merged")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run it as root (instances run under their own uids)")
    if args.ksm:
        if not KSM.exists():
            raise SystemExit("this kernel has no KSM (/sys/kernel/mm/ksm)")
        merge_identical_pages_of_children()
    root = Path("/var/tmp/dbaas-bench-instances")
    rows = []
    for profile in args.profiles.split(","):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        os.chmod(root, 0o711)
        label = f"{profile} (sandbox{', cgroups' if args.cgroups else ''})"
        rows.append((label, run(profile, args.n, root, args.cgroups, args.ksm)))
        if args.bare:
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            os.chmod(root, 0o711)
            rows.append((f"{profile} (bare)", run_bare(profile, args.n, root)))
    shutil.rmtree(root, ignore_errors=True)
    columns = list(dict.fromkeys(c for _profile, values in rows for c in values))
    print(f"{args.n} instances awake at once per profile, on {os.uname().nodename}")
    print(f"| profile | {' | '.join(columns)} |")
    print(f"|---|{'---|' * len(columns)}")
    for profile, values in rows:
        cells = [f"{values[c]:.2f}" if c in values else "-" for c in columns]
        print(f"| {profile} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
