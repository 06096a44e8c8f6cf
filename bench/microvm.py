#!/usr/bin/env python3
"""The microvm runtime against the sandbox, side by side in one run: boot (start) to
first query, the CPU of one start, host memory per idle instance, and the size of
what the microVM boots. It drives the runtimes directly (no control plane, no
pooler), on a scratch directory, with the images `manage.py build_image` made.

As root: .venv/bin/python bench/microvm.py [-n 10]

For each runtime (the sandbox; the microvm under TCG; under KVM where the bounded
probe boots a guest): N instances are made and started one at a time, each timed
from the start to the answer of its first `SELECT 1` over the socket the platform
uses, with the whole machine's CPU time over it; then, all N idle and awake,
memory: PSS of every process of each instance's uid (QEMU and its forwarders, or
postgres' processes) and the host's used memory (MemTotal - MemAvailable) against
before. All is removed at the end.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dbaas.settings")
import django  # noqa: E402

django.setup()

from bench.instances import cpu_seconds, memory_used_kb, processes_by_uid, pss_kb  # noqa: E402
from tenants.host.spec import postgres_config  # noqa: E402
from tenants.models import Plan  # noqa: E402
from unikernel_images import accel, postgres_admin  # noqa: E402
from unikernel_images.cgroups import Limits  # noqa: E402
from unikernel_images.guest import load_guest  # noqa: E402
from unikernel_images.image import default_image_name, load_image  # noqa: E402
from unikernel_images.paths import images_dir  # noqa: E402
from unikernel_images.runtimes.base import InstanceSpec, Runtime  # noqa: E402
from unikernel_images.runtimes.microvm import MicrovmRuntime  # noqa: E402
from unikernel_images.runtimes.sandbox import SandboxRuntime  # noqa: E402

UID_BASE = 391000  # apart from the platform's tenants' and bench/instances.py's
RESULTS = BASE / "var" / "bench-microvm.json"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(runtime: Runtime, n: int, memory_mb: int) -> dict[str, float]:
    image = load_image(images_dir(), default_image_name())
    specs = [
        InstanceSpec(
            instance_id=f"m{i}",
            image=image,
            uid=UID_BASE + i,
            socket_group=None,
            max_connections=25,
            platform_accounts=("root",),
            limits=Limits(memory_bytes=memory_mb << 20, cpus=1.0, processes=100),
            extra_settings=postgres_config(Plan.FREE_POSTGRES_SETTINGS),
        )
        for i in range(n)
    ]
    before = memory_used_kb()
    to_query, cpus = [], []
    try:
        for spec in specs:
            runtime.create(spec)
            cpu, began = cpu_seconds(), time.perf_counter()
            runtime.start(spec, timeout=120)
            with postgres_admin.connect(runtime.admin_socket_dir(spec.instance_id)) as conn:
                conn.execute("SELECT 1").fetchone()
            to_query.append((time.perf_counter() - began) * 1000)
            cpus.append((cpu_seconds() - cpu) * 1000)
        time.sleep(10)  # idle: start-up work done
        by_uid = processes_by_uid({UID_BASE + i for i in range(n)})
        per_instance = [sum(pss_kb(pid) for pid in pids) for pids in by_uid.values()]
        host = (memory_used_kb() - before) / n
        stops = []
        for spec in specs:
            began = time.perf_counter()
            runtime.stop(spec.instance_id)
            stops.append((time.perf_counter() - began) * 1000)
    finally:
        for spec in specs:
            runtime.destroy(spec.instance_id)
    return {
        "start to first query ms p50": statistics.median(to_query),
        "p95": percentile(to_query, 0.95),
        "CPU ms per start p50": statistics.median(cpus),
        "PSS MB per idle p50": statistics.median(per_instance) / 1024 if per_instance else 0,
        "host MB per idle": host / 1024,
        "stop ms p50": statistics.median(stops),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10)
    parser.add_argument("--memory-mb", type=int, default=256, help="the plan's memory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run it as root (instances run under their own uids)")
    guest = load_guest(images_dir())
    image = load_image(images_dir(), default_image_name())
    kvm_works, kvm_why = accel.probe_kvm(guest)
    runs: list[tuple[str, str | None]] = [("sandbox", None), ("microvm", "tcg")]
    if kvm_works:
        runs.append(("microvm", "kvm"))
    root = Path("/var/tmp/dbaas-bench-microvm")
    rows = []
    for kind, accelerator in runs:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        os.chmod(root, 0o711)
        if accelerator:
            os.environ["DBAAS_MICROVM_ACCEL"] = accelerator
        runtime = MicrovmRuntime(root) if kind == "microvm" else SandboxRuntime(root)
        label = f"{kind} ({accelerator})" if accelerator else kind
        print(f"{label}: {args.n} instances", flush=True)
        rows.append((label, run(runtime, args.n, args.memory_mb)))
    shutil.rmtree(root, ignore_errors=True)

    sizes = {
        "kernel MB": guest.manifest["kernel_bytes"] / 1e6,
        "initramfs MB": guest.manifest["initramfs_bytes"] / 1e6,
        "image rootfs MB (shared with the sandbox, read over 9p)": image.manifest["rootfs_bytes"]
        / 1e6,
    }
    print(f"\n{args.n} instances per runtime, {args.memory_mb} MB plans, on {os.uname().nodename}")
    columns = list(rows[0][1])
    print(f"| runtime | {' | '.join(columns)} |")
    print(f"|---|{'---|' * len(columns)}")
    for label, values in rows:
        print(f"| {label} | {' | '.join(f'{values[c]:.1f}' for c in columns)} |")
    print(f"\nKVM: {'works' if kvm_works else 'not used'} ({kvm_why})")
    for name, value in sizes.items():
        print(f"{name}: {value:.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"rows": rows, "kvm": kvm_why, "sizes": sizes, "n": args.n}, indent=1)
    )


if __name__ == "__main__":
    main()
