"""The microVM form of the images: what the microvm runtime boots.

One boot image serves every PostgreSQL image of the host: a kernel built for the
guest (scripts/guest-kernel.sh: Debian's kernel source, only virtio-mmio, 9p,
virtio-net and the consoles, all built in) and a small initramfs holding only a
static busybox and its init (templates/guest-init.sh.j2). The postgres closure is
not in it: the guest mounts the instance image's rootfs read-only over 9p (the
same files the sandbox runtime uses, shared by every tenant) and the tenant's data
directory read-write, so the initramfs stays a few MB (a 148 MB one took ~2.5 s to
unpack under TCG here) and every host-side operation on a tenant's data (backups
of a sleeping tenant, restore, the storage count) is the same for both runtimes.

The kernel is the uncompressed ELF `vmlinux`, which QEMU boots through its PVH
entry: decompressing Debian's xz bzImage took ~5 s of each boot under TCG here,
and its generic kernel another 2-3 s to start (12 s to postgres ready; ~1.5 s with
this one).

Layout under <images dir>: `guest@<hash12>/{vmlinux,initramfs.cpio,manifest.json}`
and a `guest` symlink to the current build, as for the instance images.
"""

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dbaas.files import render_template
from unikernel_images.image import PACKAGE_DIR, ImageError

BUSYBOX = Path("/bin/busybox")
GUEST_KERNEL_DIR = Path(__file__).resolve().parent.parent / "build" / "guest-kernel"
# 9p message size: larger reads and writes per round trip (the kernel's default is 8 KB).
MSIZE = 512 * 1024
NAME = "guest"
KERNEL = "vmlinux"  # the uncompressed kernel, booted through its PVH entry
# What a boot image holds and how it is laid out: part of its content hash, so a
# change here makes a new one.
LAYOUT = "3: vmlinux (PVH, no modules), initramfs.cpio"
# The initramfs' directories: the init's mount points, and where it keeps its files.
DIRECTORIES = ("bin", "dev", "proc", "sys", "newroot")


@dataclass(frozen=True)
class GuestLink:
    """A network link of the guest: the host forwards one unix socket to it."""

    name: str
    mac: str
    network: str  # the user-mode network's /24
    guest: str  # the guest's address on it


# The pooler's link (tenant logins) and the platform's (its superuser): postgres
# tells them apart by the address a connection comes from.
POOLER_LINK = GuestLink("pooler", "52:54:00:00:02:0f", "10.0.2.0/24", "10.0.2.15")
ADMIN_LINK = GuestLink("admin", "52:54:00:00:03:0f", "10.0.3.0/24", "10.0.3.15")
LINKS = (POOLER_LINK, ADMIN_LINK)


def host_address(link: GuestLink) -> str:
    """The address connections forwarded by the host come from, as the guest sees
    them (user-mode networking's gateway, .2)."""
    return link.network.rsplit(".", 1)[0] + ".2"


@dataclass(frozen=True)
class GuestImage:
    path: Path
    manifest: dict

    @property
    def kernel(self) -> Path:
        return self.path / KERNEL

    @property
    def initramfs(self) -> Path:
        return self.path / "initramfs.cpio"


def load_guest(images_dir: Path) -> GuestImage:
    path = images_dir / NAME
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        raise ImageError(
            f"the microvm boot image is not built in {images_dir}; run `manage.py build_image`"
        ) from None
    return GuestImage(path=path.resolve(), manifest=manifest)


def kernel_release(kernel_root: Path = GUEST_KERNEL_DIR) -> Path:
    """The newest kernel built by scripts/guest-kernel.sh."""
    releases = sorted(
        (p for p in kernel_root.glob("*") if (p / KERNEL).is_file()),
        key=lambda p: p.stat().st_mtime,
    )
    if not releases:
        raise ImageError(f"no guest kernel in {kernel_root}: run scripts/guest-kernel.sh (as root)")
    return releases[-1]


def build_guest(
    images_dir: Path,
    kernel_root: Path = GUEST_KERNEL_DIR,
    progress: Callable[[str], None] = print,
) -> GuestImage:
    """Build the boot image from the newest kernel unless an identical one exists."""
    release = kernel_release(kernel_root)
    if not BUSYBOX.is_file():
        raise ImageError(f"{BUSYBOX} is missing: install busybox-static")
    init = render_template(PACKAGE_DIR, "guest-init.sh.j2", links=LINKS, msize=MSIZE)
    files = [
        ("init", init.encode(), 0o755),
        ("bin/busybox", BUSYBOX.read_bytes(), 0o755),
    ]
    kernel = (release / KERNEL).read_bytes()
    digest = hashlib.sha256(LAYOUT.encode())
    digest.update(hashlib.sha256(kernel).digest())
    for name, data, mode in files:
        digest.update(f"{name}\0{mode}\0".encode() + hashlib.sha256(data).digest())
    content_hash = digest.hexdigest()
    final = images_dir / f"{NAME}@{content_hash[:12]}"
    if not final.exists():
        images_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=images_dir, prefix=f".build-{NAME}-"))
        try:
            os.chmod(staging, 0o755)  # QEMU runs as the tenant's uid
            (staging / KERNEL).write_bytes(kernel)
            (staging / "initramfs.cpio").write_bytes(_cpio(files, directories=DIRECTORIES))
            manifest = {
                "name": NAME,
                "kernel": release.name,
                "content_hash": content_hash,
                "initramfs_bytes": (staging / "initramfs.cpio").stat().st_size,
                "kernel_bytes": len(kernel),
            }
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            for path in staging.iterdir():
                os.chmod(path, 0o644)
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        progress(
            f"microvm boot image built: {content_hash[:12]}, kernel {release.name}, "
            f"initramfs {(final / 'initramfs.cpio').stat().st_size >> 10} KB"
        )
    else:
        progress(f"microvm boot image is up to date ({content_hash[:12]})")
    link = images_dir / NAME
    if not link.is_symlink() or link.readlink() != Path(final.name):
        tmp = images_dir / f".{NAME}.link"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(final.name)
        tmp.replace(link)
    return load_guest(images_dir)


# -- the initramfs -------------------------------------------------------------------


def _cpio(files: list[tuple[str, bytes, int]], directories: tuple[str, ...]) -> bytes:
    """A newc cpio archive (what the kernel unpacks as its initial root), made the
    same way every time: no timestamps, owner root."""
    out = bytearray()
    inode = 0

    def entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nonlocal inode
        inode += 1
        encoded = name.encode() + b"\0"
        fields = (inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        out.extend(b"070701" + b"".join(b"%08X" % value for value in fields))
        out.extend(encoded)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for directory in directories:
        entry(directory, stat.S_IFDIR | 0o755)
    entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    for name, data, mode in files:
        entry(name, stat.S_IFREG | mode, data)
    entry("TRAILER!!!", 0)
    return bytes(out)
