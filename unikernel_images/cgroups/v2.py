"""cgroup v2: one unified hierarchy, controllers handed down level by level."""

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


class V2(Cgroups):
    version = 2

    def _dir(self, instance_id: str) -> Path:
        return ROOT / GROUP / instance_id

    def apply(self, instance_id: str, limits: Limits) -> None:
        parent = ROOT / GROUP
        parent.mkdir(exist_ok=True)
        # Controllers are handed down level by level.
        for level in (ROOT, parent):
            write(level / "cgroup.subtree_control", "+memory +cpu +pids", optional=True)
        group = self._dir(instance_id)
        group.mkdir(exist_ok=True)
        write(group / "memory.max", limits.memory_bytes)
        write(group / "memory.swap.max", 0, optional=True)
        write(group / "cpu.max", f"{int(limits.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
        write(group / "pids.max", limits.processes)

    def procs_files(self, instance_id: str) -> list[Path]:
        return [self._dir(instance_id) / "cgroup.procs"]

    def remove(self, instance_id: str) -> None:
        # The pages still charged to the group (the instance's file cache) are
        # reclaimed first: a removed group that still holds pages lives on, unseen,
        # and reclaim goes on walking it (memory.reclaim: Linux 5.19 and later).
        # Once no process is left (see V1.remove).
        wait_until_empty(self._dir(instance_id) / "cgroup.procs")
        write(self._dir(instance_id) / "memory.reclaim", "1G", optional=True)
        rmdir(self._dir(instance_id))

    def memory_events(self, instance_id: str) -> int:
        path = self._dir(instance_id) / "memory.events"
        if not path.exists():
            return 0
        events = dict(line.split() for line in path.read_text().splitlines())
        return int(events.get("max", 0)) + int(events.get("oom_kill", 0))

    def cpu_throttled(self, instance_id: str) -> int:
        return throttled_periods(self._dir(instance_id) / "cpu.stat")
