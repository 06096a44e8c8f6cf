"""Locks between the platform's processes on one host: flock(2) on a file per name
under <data>/locks. A lock dies with the process that holds it, so a killed worker
never leaves one taken, and whether a lock is held says whether anyone is still
doing the work it guards (the reconcile loop asks that of backups and
provisionings: see tenants/host/tasks.py).
"""

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dbaas.env import data_dir


def _path(name: str) -> Path:
    locks = data_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return locks / f"{name}.lock"


@contextmanager
def held(name: str, timeout: float | None = None) -> Iterator[bool]:
    """Hold the lock `name` for the block. Waits forever (timeout None) or up to
    `timeout` seconds (0: not at all), then yields whether it got the lock."""
    fd = os.open(_path(name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield True
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.01)
        yield True
    finally:
        os.close(fd)


def is_held(name: str) -> bool:
    """Whether some process holds the lock `name` right now."""
    with held(name, timeout=0) as got:
        return not got


# Locks held until the process exits (hold_for_life): their descriptors, kept open.
_LIFELONG: list[int] = []


def hold_for_life(name: str) -> bool:
    """Take the lock `name` for as long as this process lives (False: another
    process has it). Whether it is held then says whether such a process runs."""
    fd = os.open(_path(name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _LIFELONG.append(fd)
    return True
