"""A tenant's data directory as an overlay: the image's template cluster, shared by
every tenant of the image and never written, under the tenant's own changes.

A new tenant costs what it changes, not a copy of the template: PostgreSQL writes
in place, so the kernel's overlayfs copies a file up into the tenant's layer the
first time the tenant writes it (a catalog it alters, the WAL segment it writes),
and files the tenant makes are its own from the start. Reads of what it never
changed come from the one shared copy (and the one page cache).

The shared layer (`<image>/shared/layer`) is a copy of the template whose files
every tenant's uid may open for writing (0666; directories 0777): PostgreSQL opens
relation files read-write even to read them, and each tenant has its own uid. It
is safe because nobody reaches it but through an overlay: its parent is root's
alone (0700), overlayfs looks up the lower layer with the mounter's (root's)
rights, and writes through an overlay land in the tenant's own layer, never below.

The overlay is mounted only inside the instance's own mount namespace (made with
`unshare` just before the sandbox, which inherits it), never on the host: each
mount in the host's namespace would be copied by every sandbox that starts
(measured: 3,000 mounts make a bubblewrap start 80-160 ms slower), and one that
exists only while the instance's processes do cannot be left behind by a crash.
The host reads the layers themselves (merged_bytes) and writes settings into the
tenant's layer while it is stopped, or through the running instance's own view
(/proc/<pid>/root).
"""

import os
import stat
from pathlib import Path

# Files a layer marks as removed from below it (a character device 0/0), and a
# directory a layer made anew over one below (whose lower contents it hides).
OPAQUE_XATTR = "trusted.overlay.opaque"


class OverlayError(Exception):
    pass


def _option_path(path: Path) -> str:
    text = str(path)
    # The mount options are a comma- and colon-separated list.
    if any(c in text for c in ",:\\\n"):
        raise OverlayError(f"path not usable in an overlay: {text!r}")
    return text


def mount_command(lower: Path, upper: Path, work: Path, target: Path) -> list[str]:
    """The `mount` that puts `upper` over `lower` at `target` (run in a private
    mount namespace: private_namespace)."""
    options = (
        f"lowerdir={_option_path(lower.resolve())},upperdir={_option_path(upper)},"
        f"workdir={_option_path(work)}"
    )
    return ["mount", "-t", "overlay", "overlay", "-o", options, str(target)]


def private_namespace() -> list[str]:
    """The command prefix that runs what follows in a mount namespace of its own,
    whose mounts the host never sees."""
    return ["unshare", "--mount", "--propagation", "private", "--"]


def _whiteout(entry: os.DirEntry) -> bool:
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


def _opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


_LOWER_INDEX: dict[Path, tuple[dict[str, int], dict[str, int]]] = {}


def _lower_index(lower: Path) -> tuple[dict[str, int], dict[str, int]]:
    """The allocated bytes of each file under `lower` and the total under each of
    its directories, by relative path ("" the whole). A template never changes, so
    this is read once per process and path: a host's usage walk then reads only
    each tenant's own layer."""
    key = lower.resolve()
    if key in _LOWER_INDEX:
        return _LOWER_INDEX[key]
    files: dict[str, int] = {}
    dirs: dict[str, int] = {}

    def walk(path: Path, rel: str) -> int:
        total = 0
        for entry in entries(path):
            name = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                total += walk(Path(entry.path), name)
            else:
                try:
                    files[name] = entry.stat(follow_symlinks=False).st_blocks * 512
                except OSError:
                    continue
                total += files[name]
        dirs[rel] = total
        return total

    walk(key, "")
    _LOWER_INDEX[key] = (files, dirs)
    return files, dirs


def entries(path: Path | None) -> list[os.DirEntry]:
    """What a directory holds ([] for none, or one that cannot be read)."""
    if path is None:
        return []
    try:
        return list(os.scandir(path))
    except OSError:
        return []


def merged_bytes(lower: Path | None, upper: Path | None) -> int:
    """The allocated bytes of the tree at `upper` over `lower` as the overlay shows
    it (files of the upper layer hide those below them; whiteouts remove them; an
    opaque directory hides all below it), read from the layers without mounting
    anything, walking only the upper layer (the lower one is indexed once)."""
    files, dirs = _lower_index(lower) if lower is not None and lower.is_dir() else ({}, {})
    total = dirs.get("", 0)

    def walk(path: Path, rel: str, hidden: bool) -> int:
        change = 0
        for entry in entries(path):
            name = f"{rel}/{entry.name}" if rel else entry.name
            below = 0 if hidden else files.get(name, 0) + dirs.get(name, 0)
            if _whiteout(entry):
                change -= below
            elif entry.is_dir(follow_symlinks=False):
                opaque = _opaque(Path(entry.path))
                if opaque or name in files:
                    change -= below  # nothing below shows through this directory
                change += walk(Path(entry.path), name, hidden or opaque or name in files)
            else:
                try:
                    change += entry.stat(follow_symlinks=False).st_blocks * 512
                except OSError:
                    continue
                change -= below
        return change

    return total + walk(upper, "", False) if upper is not None else total


def shareable(layer: Path) -> None:
    """Open a template copy's files to every tenant's uid (see the module's doc:
    reached only through overlays, under a root-only parent)."""
    os.chmod(layer.parent, 0o700)
    for root, dirs, files in os.walk(layer):
        os.chmod(root, 0o777)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666)
