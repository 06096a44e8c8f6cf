"""The runtime interface: how an instance of an image is created, started, stopped,
inspected and destroyed on this host. Plain values in, plain values out.
"""

import contextlib
import dataclasses
import enum
import json
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dbaas.files import render_template, write_atomic
from unikernel_images.cgroups import Limits
from unikernel_images.image import (
    PACKAGE_DIR,
    REGISTRAR_PATH,
    SUPERUSER,
    Image,
)


class InstanceError(Exception):
    """An instance could not be created, started or stopped; the message says why."""


class InstanceState(enum.StrEnum):
    RUNNING = "running"  # accepting queries
    STARTING = "starting"  # a process exists, not accepting queries yet
    STOPPING = "stopping"  # a process exists, shutting down
    STOPPED = "stopped"  # data present, no process
    MISSING = "missing"  # no data at all


@dataclass(frozen=True)
class InstanceSpec:
    instance_id: str
    image: Image
    # Run the instance as this uid (the platform runs as root), else as ourselves.
    uid: int | None
    # The group allowed into the socket directory: the pooler's account.
    socket_group: str | None
    max_connections: int = 20
    # (database, role) pairs allowed to log in with SCRAM.
    logins: tuple[tuple[str, str], ...] = ()
    # A host directory the instance sees at REGISTRAR_DIR: where the host's
    # registrar of databases listens (see pg_module/dbaas.c); None: no registrar.
    registrar_dir: Path | None = None
    # Extensions the owner may create (the plan's list).
    allowed_extensions: tuple[str, ...] = ()
    # Why writes are refused (over the plan's storage limit); "": they are not.
    storage_full: str = ""
    # The host accounts that may log in as the platform's superuser (peer
    # authentication; the image's /etc/passwd names them). Empty: anyone who can
    # reach the socket (the platform runs as one ordinary user).
    platform_accounts: tuple[str, ...] = ()
    # What it may use of the host (cgroups); None: no limits.
    limits: Limits | None = None
    # PostgreSQL settings of the plan's that the owner cannot raise.
    temp_file_limit_mb: int = -1
    work_mem_max_mb: int = 0
    extra_settings: dict[str, str] = field(default_factory=dict)


class ExportStream:
    """A readable tar stream from a child process; closing it checks the process."""

    def __init__(self, proc, what: str) -> None:
        self.proc = proc
        self.what = what

    def chunks(self, size: int = 1 << 20) -> Iterable[bytes]:
        while chunk := self.proc.stdout.read(size):
            yield chunk

    def close(self) -> None:
        self.proc.stdout.close()
        code = self.proc.wait(timeout=600)
        if code != 0:
            err = self.proc.stderr.read().decode(errors="replace").strip()[-1000:]
            raise InstanceError(f"{self.what} failed ({code}): {err}")

    def __enter__(self) -> "ExportStream":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.proc.kill()
            self.proc.wait()
            return
        self.close()


@dataclass(frozen=True)
class InstanceStatus:
    state: InstanceState
    pid: int | None = None


class Runtime(ABC):
    kind: str

    def __init__(self, instances_dir: Path) -> None:
        self.instances_dir = instances_dir

    def instance_dir(self, instance_id: str) -> Path:
        return self.instances_dir / instance_id

    def socket_dir(self, instance_id: str) -> Path:
        """The directory holding the instance's `.s.PGSQL.5432`, for the pooler."""
        return self.instance_dir(instance_id) / "run"

    def admin_socket_dir(self, instance_id: str) -> Path:
        """The directory of the socket the platform's own sessions (its superuser)
        use. The sandbox's server tells the platform from the pooler by the peer's
        credentials on the one socket; a runtime whose server cannot has a second."""
        return self.socket_dir(instance_id)

    def log_file(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "postgres.log"

    # The disk set aside for a full disk is kept per filesystem, not per instance
    # (32 MB beside each of 10,000 sleeping databases would be 320 GB): one shared
    # reserve of SHARED_RESERVES shares for the instances on the host's instances
    # filesystem, and one share beside an instance on a filesystem of its own.
    # A start that finds the disk full takes a share (release_reserve), its server
    # starts and its owner can connect to free space; reconcile sets it aside again
    # once there is room.
    SHARED_RESERVES = 8

    def reserve_file(self, instance_id: str) -> Path:
        """The reserve of the filesystem the instance is on."""
        own = self.instance_dir(instance_id)
        try:
            shared = os.stat(own).st_dev == os.stat(self.instances_dir).st_dev
        except FileNotFoundError:
            shared = True
        return self.instances_dir / ".reserve" if shared else own / "reserve"

    def _given_back_mark(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "reserve-given-back"

    def reserve_given_back(self, instance_id: str) -> bool:
        """Has the instance taken a share of the reserve, the full disk not over yet?"""
        return self._given_back_mark(instance_id).exists()

    def keep_reserve(self, instance_id: str, nbytes: int) -> bool:
        """Keep the reserve of the instance's filesystem whole: `nbytes` a share
        (a file that size, blocks really taken), SHARED_RESERVES shares for the
        shared one; not grown while the disk has less than twice a share free.
        True if this instance had taken a share (release_reserve) and the reserve
        is whole again: the full disk is over for it."""
        path = self.reserve_file(instance_id)
        legacy = self.instance_dir(instance_id) / "reserve"
        if path != legacy and legacy.exists():
            legacy.unlink()  # a reserve of its own from before they were shared
        target = nbytes * (self.SHARED_RESERVES if path == self.instances_dir / ".reserve" else 1)
        if nbytes <= 0:
            return False
        size = path.stat().st_size if path.exists() else 0
        if size < target:
            disk = os.statvfs(path.parent)
            if disk.f_bavail * disk.f_frsize < 2 * nbytes:
                return False
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, target)  # blocks really taken, not sparse
            except OSError:
                os.ftruncate(fd, size)  # what it had; the rest when there is room
                return False
            finally:
                os.close(fd)
        mark = self._given_back_mark(instance_id)
        if mark.exists():
            mark.unlink()
            return True
        return False

    def release_reserve(self, instance_id: str, nbytes: int) -> int:
        """Give a share (`nbytes`) of the reserve of the instance's filesystem back
        to the disk, for this instance; the bytes freed."""
        path = self.reserve_file(instance_id)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return 0
        freed = min(size, nbytes)
        if freed == size:
            path.unlink()
        else:
            os.truncate(path, size - freed)  # the blocks past the end go back
        with contextlib.suppress(OSError):  # an empty file fits: freed above
            self._given_back_mark(instance_id).touch()
        return freed

    def remember(self, spec: InstanceSpec) -> None:
        """Keep the spec the instance is started with beside it, so that the host
        can start it again on its own (a wake while the control plane is down)."""
        values = dataclasses.asdict(spec) | {"runtime": self.kind}
        write_atomic(
            self.instance_dir(spec.instance_id) / "spec.json",
            json.dumps(values, default=str, indent=1),
            mode=0o600,
        )

    def remembered(self, instance_id: str) -> InstanceSpec | None:
        """The spec of its last start (remember), or None."""
        try:
            values = json.loads((self.instance_dir(instance_id) / "spec.json").read_text())
        except FileNotFoundError:
            return None
        values.pop("runtime", None)
        image = values.pop("image")
        limits = values.pop("limits")
        registrar = values.pop("registrar_dir")
        return InstanceSpec(
            **values
            | {
                "image": Image(
                    name=image["name"], path=Path(image["path"]), manifest=image["manifest"]
                ),
                "limits": Limits(**limits) if limits else None,
                "registrar_dir": Path(registrar) if registrar else None,
                "logins": tuple(tuple(pair) for pair in values["logins"]),
                "allowed_extensions": tuple(values["allowed_extensions"]),
                "platform_accounts": tuple(values["platform_accounts"]),
            }
        )

    @abstractmethod
    def create(self, spec: InstanceSpec) -> None:
        """Materialise the instance's data from the image's template (no initdb)."""

    @abstractmethod
    def configure(self, spec: InstanceSpec) -> None:
        """Write the instance's settings and logins; a running instance rereads them."""

    @abstractmethod
    def start(self, spec: InstanceSpec, timeout: float = 30) -> None:
        """Start and return once the instance accepts queries."""

    @abstractmethod
    def stop(self, instance_id: str, timeout: float = 30) -> None:
        """Clean fast shutdown; no process is left afterwards."""

    @abstractmethod
    def status(self, instance_id: str) -> InstanceStatus: ...

    def is_stopped(self, instance_id: str) -> bool:
        """status(instance_id).state is STOPPED (an instance that exists and has no
        process), where a runtime can say it for less."""
        return self.status(instance_id).state is InstanceState.STOPPED

    def recorded_pid(self, instance_id: str) -> int | None:
        """The host pid of the process whose exit ends the instance, as its start
        recorded it (None if none is), for a watcher to be told of that exit. It
        may be stale: is_stopped() is what says whether the instance runs."""
        return None

    def disk_usage(self, instance_id: str) -> int:
        """Bytes the instance occupies on this host (its data, logs and settings)."""
        return allocated_bytes(self.instance_dir(instance_id))

    @abstractmethod
    def data_usage(self, instance_id: str) -> int:
        """Bytes of the tenant's databases: what its plan's storage limit counts
        (not the write-ahead log, temporary files or the template databases)."""

    def prepare_spares(self, image: Image, count: int) -> int:
        """Make work for `create` ahead of time, up to `count` instances; return how many
        were made. Runtimes with nothing to prepare keep this default."""
        return 0

    # -- backup and restore: a physical copy as one tar stream -------------------------

    @abstractmethod
    def export_data(self, instance_id: str) -> ExportStream:
        """A tar stream of the instance's whole cluster: an online base backup if it
        runs, else its cleanly shut-down data directory (without starting it)."""

    @abstractmethod
    def import_data(self, spec: InstanceSpec, chunks: Iterable[bytes]) -> None:
        """Unpack a tar stream made by export_data next to the current data."""

    @abstractmethod
    def swap_in_imported(self, spec: InstanceSpec) -> None:
        """With the instance stopped: imported data becomes current, current is kept."""

    @abstractmethod
    def swap_back(self, spec: InstanceSpec) -> None:
        """Undo swap_in_imported (the kept data becomes current again)."""

    @abstractmethod
    def drop_previous(self, instance_id: str) -> None:
        """Forget the data kept by swap_in_imported, and any unused import."""

    @abstractmethod
    def import_leftovers(self, instance_id: str) -> bool:
        """Whether an import or swap left anything beside the instance's data."""

    @abstractmethod
    def abandon_import(self, spec: InstanceSpec) -> bool:
        """After an import or swap cut short (its worker died, wherever it was): the
        data swap_in_imported kept becomes current again, what was imported goes.
        True if data was put back (the instance is then stopped)."""

    def destroy(self, instance_id: str) -> None:
        """Stop and remove everything the instance had on this host."""
        self.stop(instance_id)
        shutil.rmtree(self.instance_dir(instance_id), ignore_errors=True)


@dataclass(frozen=True)
class GuestNetwork:
    """How the server of a runtime with a network of its own is reached: it listens
    on `listen_addresses`; tenant logins come from `pooler_peer`, the platform's
    superuser from `admin_peer`; the host's registrar is at `registrar` (an
    address and port forwarded to it: see runtimes/microvm.py)."""

    listen_addresses: str
    pooler_peer: str
    admin_peer: str
    registrar: str


def _registrar_setting(spec: InstanceSpec, network: GuestNetwork | None) -> str:
    """dbaas.registrar (pg_module/dbaas.c): where the server asks the host's
    registrar; empty for an instance the platform does not route (no registrar)."""
    if spec.registrar_dir is None:
        return ""
    if network is not None:
        return f"tcp:{network.registrar}"
    return REGISTRAR_PATH


def render_postgres_config(
    runtime: str, spec: InstanceSpec, data_dir: Path, network: GuestNetwork | None = None
) -> bool:
    """Render instance.conf and pg_hba.conf into `data_dir`; True if anything changed.
    With a `network`, the server listens on it and is reached only over it, and
    reaches the host's registrar over it."""
    context = {
        "runtime": runtime,
        "instance_id": spec.instance_id,
        "superuser": SUPERUSER,
        "network": network,
    }
    files = {
        "instance.conf": render_template(
            PACKAGE_DIR,
            "instance.conf.j2",
            max_connections=spec.max_connections,
            registrar=_registrar_setting(spec, network),
            allowed_extensions=",".join(spec.allowed_extensions),
            storage_full=spec.storage_full.replace("'", ""),
            temp_file_limit=f"{spec.temp_file_limit_mb}MB" if spec.temp_file_limit_mb >= 0 else -1,
            work_mem_max_mb=spec.work_mem_max_mb,
            extra_settings=spec.extra_settings,
            **context,
        ),
        "pg_hba.conf": render_template(
            PACKAGE_DIR,
            "pg_hba.conf.j2",
            logins=spec.logins,
            superuser_auth="peer map=platform" if spec.platform_accounts else "trust",
            **context,
        ),
        "pg_ident.conf": render_template(
            PACKAGE_DIR, "pg_ident.conf.j2", platform_accounts=spec.platform_accounts, **context
        ),
    }
    changed = False
    for name, text in files.items():
        path = data_dir / name
        if write_atomic(path, text, mode=0o600):
            changed = True
            if spec.uid is not None:
                os.chown(path, spec.uid, spec.uid)
    return changed


def allocated_bytes(root: Path) -> int:
    """Allocated blocks under `root`, as the disk sees them, never following links."""
    total = 0
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:  # removed or unreadable meanwhile: not ours to count
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total
