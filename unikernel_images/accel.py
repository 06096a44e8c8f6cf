"""How this host runs microvm guests: with KVM if it works, else with QEMU's TCG
emulation; and what a TCG guest must be told about its clock.

`/dev/kvm` existing does not mean a guest boots under it: on a nested PVM
hypervisor (these machines) KVM_CREATE_VM works and a standard kernel hangs. So
`auto` boots the real guest kernel once under KVM with a bounded timeout (the
init ends the machine as soon as it runs: `dbaas.probe=1`) and remembers the answer
beside the boot image, keyed by what it depends on; nothing waits on a bad KVM
past the probe's timeout, and that only once.
"""

import ctypes
import functools
import json
import logging
import mmap
import os
import subprocess
import time
from pathlib import Path

from dbaas.files import write_atomic
from unikernel_images.guest import GuestImage

log = logging.getLogger(__name__)

ACCELERATORS = ("auto", "kvm", "tcg")
KVM_DEVICE = Path("/dev/kvm")
PROBE_TIMEOUT = 15.0  # a good KVM boots the probe in well under a second
QEMU = "qemu-system-x86_64"
PROBE_OK = "dbaas-guest: probe ok"


class AccelError(Exception):
    pass


# Every guest's: the console on the serial port; on a panic, and when its init ends
# it, the machine resets (a triple fault: there is no ACPI to power it off) and QEMU,
# run with -no-reboot, exits; the random pool is seeded from the CPU's RDRAND
# (else PostgreSQL's first getrandom() waits ~2.5 s for entropy under TCG here).
KERNEL_ARGS = ("console=ttyS0", "quiet", "panic=-1", "reboot=t", "random.trust_cpu=on")


def machine_args(accel: str) -> list[str]:
    """QEMU's machine and CPU for a guest: the microvm machine (no PCI, no ACPI
    tables to walk: the kernel finds its devices on its command line, which QEMU
    extends, and its CPUs in the MP table). Under TCG the timer chips are on (there
    is no kvmclock) and the CPU offers RDRAND, which the kernel is told to trust
    (KERNEL_ARGS), so the guest's random pool is ready at once."""
    if accel == "kvm":
        return ["-M", "microvm,x-option-roms=on,rtc=on,acpi=off", "-accel", "kvm", "-cpu", "host"]
    return [
        "-M",
        "microvm,x-option-roms=on,rtc=on,pit=on,pic=on,acpi=off",
        "-accel",
        "tcg,tb-size=64",  # MB of translated code (the default is 1 GB per guest)
        "-cpu",
        "qemu64,+rdrand",
    ]


def kernel_clock_args(accel: str) -> list[str]:
    """Kernel parameters for the guest's clock. Under TCG the guest's TSC is the
    host's, but the kernel's calibration of it against the emulated PIT fails or
    hangs (emulation is too jittery for it): it is told the frequency, and not to
    distrust the TSC when the emulated timer ticks come late."""
    if accel == "kvm":
        return []
    return [f"tsc_early_khz={tsc_khz()}", "tsc=reliable"]


@functools.cache
def tsc_khz() -> int:
    """The host's TSC frequency, measured (RDTSC against the monotonic clock over
    0.1 s), else what /proc/cpuinfo says."""
    try:
        # rdtsc; shl rdx, 32; or rax, rdx; ret
        code = bytes.fromhex("0f3148c1e2204809d0c3")
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(code)
        rdtsc = ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
        samples = []
        for _ in range(3):
            t0, c0 = time.monotonic_ns(), rdtsc()
            time.sleep(0.1)
            t1, c1 = time.monotonic_ns(), rdtsc()
            samples.append((c1 - c0) * 1_000_000 // (t1 - t0))
        return sorted(samples)[1]
    except (OSError, ValueError):  # no executable mappings allowed here
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
        raise AccelError("cannot tell the host's TSC frequency") from None


def accelerator(setting: str, guest: GuestImage, cache_dir: Path) -> str:
    """`kvm` or `tcg` for `setting` (auto|kvm|tcg)."""
    if setting not in ACCELERATORS:
        raise AccelError(f"unknown accelerator {setting!r}; known: {', '.join(ACCELERATORS)}")
    if setting != "auto":
        if setting == "kvm" and not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
            raise AccelError(f"accelerator kvm asked for, but {KVM_DEVICE} is not usable")
        return setting
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return "tcg"
    key = f"{guest.manifest['content_hash']}:{_qemu_version()}:{os.stat(KVM_DEVICE).st_rdev}"
    if key in _decided:  # every start asks, twice: the file is read once per process
        return _decided[key]
    cache = cache_dir / "accel.json"
    try:
        known = json.loads(cache.read_text())
        if known.get("key") == key:
            _decided[key] = known["accel"]
            return known["accel"]
    except (FileNotFoundError, ValueError):
        pass
    works, why = probe_kvm(guest)
    accel = "kvm" if works else "tcg"
    log.warning("microvm accelerator: %s (%s)", accel, why)
    write_atomic(cache, json.dumps({"key": key, "accel": accel, "why": why}) + "\n")
    _decided[key] = accel
    return accel


# What `accelerator` decided in this process, by what the decision depends on.
_decided: dict[str, str] = {}


def probe_kvm(guest: GuestImage, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """Boot the guest kernel under KVM until its init runs; (worked, why)."""
    args = [
        QEMU,
        *machine_args("kvm"),
        "-m",
        "128",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-kernel",
        str(guest.kernel),
        "-initrd",
        str(guest.initramfs),
        "-append",
        " ".join([*KERNEL_ARGS, "dbaas.probe=1"]),
        "-serial",
        "stdio",
    ]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, cwd="/"
        )
    except subprocess.TimeoutExpired:
        return False, f"the KVM probe did not boot within {timeout:.0f} s"
    except OSError as exc:
        return False, f"cannot run {QEMU}: {exc}"
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    if PROBE_OK in output:
        return True, f"the KVM probe booted in {time.monotonic() - started:.2f} s"
    return False, f"the KVM probe failed ({proc.returncode}): {output.strip()[-300:]}"


@functools.cache
def _qemu_version() -> str:
    try:
        out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return "none"
    return out.stdout.splitlines()[0] if out.stdout else "none"
