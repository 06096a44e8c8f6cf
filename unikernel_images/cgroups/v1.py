"""cgroup v1: a hierarchy per controller (memory, cpu, pids), as on these machines."""

from pathlib import Path

from unikernel_images.cgroups.base import (
    CPU_PERIOD_US,
    GROUP,
    ROOT,
    Cgroups,
    Limits,
    rmdir,
    throttled_periods,
    wait_until_empty,
    write,
)


class V1(Cgroups):
    version = 1
    CONTROLLERS = ("memory", "cpu", "pids")

    def _dir(self, controller: str, instance_id: str) -> Path:
        return ROOT / controller / GROUP / instance_id

    def apply(self, instance_id: str, limits: Limits) -> None:
        for controller in self.CONTROLLERS:
            self._dir(controller, instance_id).mkdir(parents=True, exist_ok=True)
        memory = self._dir("memory", instance_id)
        # Swap counts against the same limit where the kernel accounts it. memsw
        # may never be below the memory limit: raise it first, lower it last.
        memsw = memory / "memory.memsw.limit_in_bytes"
        write(memsw, limits.memory_bytes, optional=True)
        write(memory / "memory.limit_in_bytes", limits.memory_bytes)
        write(memsw, limits.memory_bytes, optional=True)
        cpu = self._dir("cpu", instance_id)
        write(cpu / "cpu.cfs_period_us", CPU_PERIOD_US)
        write(cpu / "cpu.cfs_quota_us", int(limits.cpus * CPU_PERIOD_US))
        write(self._dir("pids", instance_id) / "pids.max", limits.processes)

    def procs_files(self, instance_id: str) -> list[Path]:
        return [self._dir(c, instance_id) / "cgroup.procs" for c in self.CONTROLLERS]

    def remove(self, instance_id: str) -> None:
        # The pages still charged to the group (the instance's file cache) are
        # dropped first: a removed group that still holds pages lives on, unseen,
        # and reclaim goes on walking it. Once no process is left: a page they
        # still use cannot be dropped, and a group they are in cannot be removed.
        wait_until_empty(self._dir("pids", instance_id) / "cgroup.procs")
        write(self._dir("memory", instance_id) / "memory.force_empty", 0, optional=True)
        for controller in self.CONTROLLERS:
            rmdir(self._dir(controller, instance_id))

    def memory_events(self, instance_id: str) -> int:
        path = self._dir("memory", instance_id) / "memory.failcnt"
        return int(path.read_text()) if path.exists() else 0

    def cpu_throttled(self, instance_id: str) -> int:
        return throttled_periods(self._dir("cpu", instance_id) / "cpu.stat")
