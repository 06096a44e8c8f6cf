"""The files every instance of an image shares, kept in the page cache on the
host's account rather than a tenant's.

The kernel charges a page of the page cache to the memory cgroup of whoever reads
it first. When a tenant's server is the first to run the postgres binary, map a
library or read a catalog file of the shared template (overlayfs reads the lower
layer's own pages), those pages are charged to that server's group. A sleeping
server's groups are emptied and removed (`Cgroups.remove`, `memory.force_empty`:
a removed group that still holds pages lives on and reclaim keeps walking it), and
emptying a group evicts every page charged to it, mapped or not, from under every
other server using it: measured here, a 100 MB file read first in one group and
mapped by a process outside it was gone from the cache after that group's
`force_empty`. The other servers then fault them back in from disk.

Read ahead by the host's own process (the one starting an instance, in the host's
group) before tenants touch them, the shared files are charged to the host and a
tenant's group holds only its own data. Pages already cached stay charged to
whoever read them, so this is repeated, at most every WARM_INTERVAL seconds per
image and process: after the kernel evicts shared pages under memory pressure, the
next start puts them back on the host's account.
"""

import functools
import os
import threading
import time
from pathlib import Path

WARM_INTERVAL = 10.0  # seconds; one pass over an image costs ~9 ms when all is cached
# posix_fadvise(WILLNEED) reads ahead at most a few MB per call: large files are
# asked for in pieces.
CHUNK = 4 << 20
ELF_MAGIC = b"\x7fELF"

_lock = threading.Lock()
_warmed: dict[tuple[Path, Path | None], float] = {}


def keep_on_host(rootfs: Path, template: Path | None) -> None:
    """Read ahead an image's executables and libraries (under `rootfs`) and the
    files of the template its instances share (if layered), unless this process did
    in the last WARM_INTERVAL seconds."""
    key = (rootfs, template)
    now = time.monotonic()
    with _lock:
        if now - _warmed.get(key, -WARM_INTERVAL) < WARM_INTERVAL:
            return
        _warmed[key] = now
    paths = shared_files(rootfs, elf_only=True)
    if template is not None:
        paths += shared_files(template, elf_only=False)
    for path in paths:
        _read_ahead(path)


def forget() -> None:
    """Warm again at the next call (for tests that evict the files first)."""
    with _lock:
        _warmed.clear()


@functools.cache
def shared_files(root: Path, elf_only: bool) -> tuple[Path, ...]:
    """The regular files under `root` (an image's, which never changes once built)."""
    found = []
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            if path.is_symlink() or not path.is_file():
                continue
            if elf_only:
                try:
                    with open(path, "rb") as f:
                        if f.read(4) != ELF_MAGIC:
                            continue
                except OSError:
                    continue
            found.append(path)
    return tuple(found)


def _read_ahead(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # an image being removed: nothing to keep
    try:
        size = os.fstat(fd).st_size
        for offset in range(0, size, CHUNK):
            os.posix_fadvise(fd, offset, CHUNK, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)
