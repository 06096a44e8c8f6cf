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


def merged_bytes(lower: Path | None, upper: Path | None) -> int:
    """The allocated bytes of the tree at `upper` over `lower` as the overlay shows
    it (files of the upper layer hide those below them; whiteouts remove them),
    read from the layers without mounting anything."""
    total = 0
    upper_names: set[str] = set()
    try:
        entries = list(os.scandir(upper)) if upper is not None else []
    except OSError:
        entries = []
    for entry in entries:
        upper_names.add(entry.name)
        if _whiteout(entry):
            continue
        if entry.is_dir(follow_symlinks=False):
            below = None if lower is None or _opaque(Path(entry.path)) else lower / entry.name
            total += merged_bytes(below if below and below.is_dir() else None, Path(entry.path))
        else:
            try:
                total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    if lower is None:
        return total
    try:
        below_entries = list(os.scandir(lower))
    except OSError:
        return total
    for entry in below_entries:
        if entry.name in upper_names:
            continue
        if entry.is_dir(follow_symlinks=False):
            total += merged_bytes(Path(entry.path), None)
        else:
            try:
                total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total


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
