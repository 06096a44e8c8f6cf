"""The interface to control groups: what one instance may use of the host (memory,
CPU, processes), set by a group per instance. The runtime puts an instance's first
process into its groups before it starts anything (`procs_files`); every process
of the instance inherits them.
"""

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
GROUP = "dbaas"  # the platform's groups live under this one in each hierarchy
CPU_PERIOD_US = 100_000


# What a postgres process maps besides what it allocates: the binary, its
# libraries and the shared memory (~100 MB of address space for an idle backend).
PROCESS_BASE_BYTES = 128 << 20


@dataclass(frozen=True)
class Limits:
    memory_bytes: int  # all of the instance's processes together
    cpus: float  # at most this many CPUs' worth of time (0.5: half a core)
    processes: int

    @property
    def process_address_space_bytes(self) -> int:
        """RLIMIT_AS of each process: three quarters of the instance's memory (its
        mappings included, so a backend can allocate somewhat less); past that
        PostgreSQL answers "out of memory" for that query alone. It must give out
        before the cgroup's limit does: the kernel's OOM killer would kill the
        process, and PostgreSQL then restarts the whole server, every session of
        the tenant with it."""
        return max(self.memory_bytes * 3 // 4, PROCESS_BASE_BYTES + (64 << 20))


class Cgroups(ABC):
    version: int

    @abstractmethod
    def apply(self, instance_id: str, limits: Limits) -> None:
        """Create the instance's groups (if needed) and set its limits."""

    @abstractmethod
    def procs_files(self, instance_id: str) -> list[Path]:
        """The files a process writes its pid to, to join the instance's groups."""

    @abstractmethod
    def remove(self, instance_id: str) -> None:
        """Remove the instance's groups (they must hold no process)."""

    @abstractmethod
    def memory_events(self, instance_id: str) -> int:
        """How many times the instance hit its memory limit."""

    @abstractmethod
    def cpu_throttled(self, instance_id: str) -> int:
        """How many periods the instance was held back at its CPU limit."""


def write(path: Path, value: object, optional: bool = False) -> None:
    try:
        path.write_text(f"{value}\n")
    except OSError:
        if not optional:
            raise


# The launch's bubblewrap outlives the server it watches by a moment: a group is
# removed once its last process is gone, after this long at most.
EMPTY_PATIENCE = 2.0


def wait_until_empty(procs: Path, patience: float = EMPTY_PATIENCE) -> bool:
    """Whether the group of this cgroup.procs file holds no process (waiting for
    the last ones to exit)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            if not procs.read_text().strip():
                return True
        except FileNotFoundError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:  # still has processes: the next removal tries again
        log.warning("cgroup %s not removed: %s", path, exc)


def throttled_periods(cpu_stat: Path) -> int:
    """nr_throttled of a cpu.stat file (v1 and v2 write it alike)."""
    if not cpu_stat.exists():
        return 0
    stats = dict(line.split() for line in cpu_stat.read_text().splitlines() if " " in line)
    return int(stats.get("nr_throttled", 0))
