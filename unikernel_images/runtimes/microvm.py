"""The microvm runtime: each instance's postgres runs in a QEMU microvm of its own,
a hardware boundary between tenants, booted from the same image as the sandbox's.

The guest (unikernel_images/guest.py) is a kernel, a small initramfs and an init
whose only child is postgres. It reads the image's rootfs read-only and the
tenant's data directory read-write over 9p: the data is the very directory the
sandbox runtime would use (layered over the shared template the same way), so
creating, backing up a sleeping tenant, restoring, counting its storage and
changing its settings are the sandbox's own code, on the host, without booting.

What differs is how the server is started, reached and stopped:

- QEMU runs as the tenant's uid, inside bubblewrap (its own pid, net, ipc and
  mount namespaces; the host's /usr read-only; of the host's files only the
  instance's own), its cgroups joined, as the sandbox's postgres would be.
- The guest's network is QEMU's user-mode network with `restrict=on`: the guest
  reaches nothing (not the host, not other tenants, not the internet) but its own
  registrar socket, through a forward QEMU makes (CREATE DATABASE). Two links
  are forwarded into it: the pooler's and the platform's. QEMU binds their host
  ends on the loopback of its own empty network namespace, and two socat
  processes there serve them as unix sockets in the instance's directories, the
  pooler's in socket_dir (as the sandbox's postgres does) and the platform's in
  admin_socket_dir (root's alone). postgres tells the two apart by the address a
  connection comes from (pg_hba.conf): no peer credentials cross a network.
- The host asks the guest's init to stop or reload postgres over a control port
  (a virtio console on a unix socket); the init ends the machine when postgres
  exits (it resets, and QEMU, run with -no-reboot, exits). SIGTERM, then SIGKILL,
  to QEMU are the fallback.
"""

import contextlib
import dataclasses
import functools
import grp
import math
import os
import shlex
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from unikernel_images import accel, cgroups
from unikernel_images.guest import (
    ADMIN_LINK,
    LINKS,
    POOLER_LINK,
    GuestImage,
    host_address,
    load_guest,
)
from unikernel_images.image import REGISTRAR_DIR, REGISTRAR_PATH
from unikernel_images.runtimes.base import (
    GuestNetwork,
    InstanceError,
    InstanceSpec,
    InstanceState,
    render_postgres_config,
)
from unikernel_images.runtimes.sandbox import SandboxRuntime, drop_privileges

# QEMU's own memory besides the guest's: its code and libraries, the translated
# code cache under TCG (tb-size in accel.py), device state and I/O buffers.
QEMU_OVERHEAD_BYTES = 160 << 20
# Guest memory when the plan sets none.
DEFAULT_GUEST_MEMORY_MB = 256
# The guest's kernel, its page cache and postgres' shared memory need this much.
MIN_GUEST_MEMORY_MB = 128
# Threads of QEMU and the forwarders' processes (one per open connection).
HOST_PROCESSES = 256
GUEST_PORT = 5432
# The ports QEMU forwards from, on the loopback of its own network namespace.
HOST_PORTS = {POOLER_LINK.name: 5432, ADMIN_LINK.name: 5433}
# Where the guest's postgres finds the host's registrar (CREATE DATABASE): an
# address on the platform's link that QEMU forwards, one connection at a time, to
# the instance's registrar socket, bound into QEMU's namespace where the sandbox
# binds it into its own (REGISTRAR_DIR).
REGISTRAR_FORWARD = ("10.0.3.100", 5400)
NETWORK = GuestNetwork(
    listen_addresses=",".join(link.guest for link in LINKS),
    pooler_peer=host_address(POOLER_LINK),
    admin_peer=host_address(ADMIN_LINK),
    registrar="{}:{}".format(*REGISTRAR_FORWARD),
)


def accelerator_setting() -> str:
    """auto|kvm|tcg (DBAAS_MICROVM_ACCEL)."""
    return os.environ.get("DBAAS_MICROVM_ACCEL", "auto")


class MicrovmRuntime(SandboxRuntime):
    kind = "microvm"

    def admin_socket_dir(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "admin"

    def _control_dir(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "control"

    def _control_socket(self, instance_id: str) -> Path:
        return self._control_dir(instance_id) / "control.sock"

    def _render_config(self, spec: InstanceSpec, data_dir: Path) -> bool:
        return render_postgres_config(self.kind, spec, data_dir, network=NETWORK)

    def _make_socket_dir(self, spec: InstanceSpec) -> None:
        super()._make_socket_dir(spec)
        # The platform's socket and the control port: the instance's uid (its
        # QEMU and forwarders) makes them, root reaches them; nobody else.
        iid = spec.instance_id
        for directory in (self.admin_socket_dir(iid), self._control_dir(iid)):
            directory.mkdir(mode=0o700, exist_ok=True)
            if spec.uid is not None:
                os.chown(directory, spec.uid, spec.uid)
            os.chmod(directory, 0o700)

    # -- what the instance may use ---------------------------------------------------

    @staticmethod
    def guest_memory_mb(spec: InstanceSpec) -> int:
        if spec.limits is None:
            return DEFAULT_GUEST_MEMORY_MB
        return max(MIN_GUEST_MEMORY_MB, spec.limits.memory_bytes >> 20)

    @staticmethod
    def guest_cpus(spec: InstanceSpec) -> int:
        if spec.limits is None or spec.limits.cpus <= 0:
            return 1
        return max(1, math.ceil(spec.limits.cpus))

    def _host_limits(self, spec: InstanceSpec) -> cgroups.Limits | None:
        # The plan's memory is the guest's; QEMU needs its own on top. The CPU
        # limit holds as it is (the guest's vCPUs are QEMU's threads).
        if spec.limits is None:
            return None
        return dataclasses.replace(
            spec.limits,
            memory_bytes=(self.guest_memory_mb(spec) << 20) + QEMU_OVERHEAD_BYTES,
            processes=max(spec.limits.processes, HOST_PROCESSES),
        )

    def _process_limits(self, spec: InstanceSpec) -> list[str]:
        # An address-space cap sized for a postgres backend would stop QEMU,
        # which maps the guest's memory and its code cache; the cgroup holds.
        return []

    # -- the launch: bubblewrap around QEMU and the forwarders ------------------------

    def _guest(self, spec: InstanceSpec) -> GuestImage:
        return load_guest(spec.image.path.parent)

    def _accelerator(self, spec: InstanceSpec, guest: GuestImage) -> str:
        # Decided once per host, beside the images (build_image decides it first).
        return accel.accelerator(accelerator_setting(), guest, spec.image.path.parent)

    def _bwrap_args(self, spec: InstanceSpec, info_fd: int) -> list[str]:
        iid = spec.instance_id
        guest = self._guest(spec)
        kvm = self._accelerator(spec, guest) == "kvm"
        return [
            "bwrap",
            "--unshare-pid",
            "--unshare-net",  # an empty network namespace: loopback only
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--as-pid-1",
            "--new-session",
            "--hostname",
            iid[:63],
            "--ro-bind",
            "/usr",
            "/usr",
            *_merged_usr_links(),
            "--ro-bind",
            "/etc/ld.so.cache",
            "/etc/ld.so.cache",
            # Directories bubblewrap makes for the binds below are root's alone
            # (0700) unless made first: QEMU runs as the tenant's uid.
            *(
                arg
                for path in ("/run", "/guest", "/image")
                for arg in ("--perms", "0755", "--dir", path)
            ),
            "--ro-bind",
            str(guest.path),
            "/guest",
            "--ro-bind",
            str(spec.image.rootfs),
            "/image",
            "--bind",
            str(self.data_dir(iid)),
            "/data",
            "--bind",
            str(self.socket_dir(iid)),
            "/run/pooler",
            "--bind",
            str(self.admin_socket_dir(iid)),
            "/run/admin",
            "--bind",
            str(self._control_dir(iid)),
            "/run/control",
            *(["--bind", str(spec.registrar_dir), REGISTRAR_DIR] if spec.registrar_dir else []),
            "--dev",
            "/dev",
            *(["--dev-bind", str(accel.KVM_DEVICE), str(accel.KVM_DEVICE)] if kvm else []),
            "--proc",
            "/proc",
            "--tmpfs",
            "/tmp",
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/bin",
            "--chdir",
            "/",
            "--info-fd",
            str(info_fd),
        ]

    def _command(self, spec: InstanceSpec) -> list[str]:
        guest = self._guest(spec)
        kind = self._accelerator(spec, guest)
        forwards = [
            shlex.join(
                [
                    "socat",
                    f"UNIX-LISTEN:{directory}/.s.PGSQL.5432,fork,unlink-early,mode=0777",
                    f"TCP:127.0.0.1:{HOST_PORTS[link.name]},nodelay",
                ]
            )
            for link, directory in ((POOLER_LINK, "/run/pooler"), (ADMIN_LINK, "/run/admin"))
        ]
        qemu = shlex.join(self._qemu_args(spec, guest, kind))
        # The forwarders start first, QEMU replaces the shell as the namespace's
        # first process: when it exits, the kernel ends the forwarders with it.
        script = " && ".join([*(f"{{ {forward} & }}" for forward in forwards), f"exec {qemu}"])
        groups = (grp.getgrnam("kvm").gr_gid,) if kind == "kvm" and os.geteuid() == 0 else ()
        return [*drop_privileges(spec, groups), "/usr/bin/sh", "-c", script]

    def _qemu_args(self, spec: InstanceSpec, guest: GuestImage, kind: str) -> list[str]:
        uid = spec.uid if spec.uid is not None else os.geteuid()
        kernel_args = [
            *accel.KERNEL_ARGS,
            *accel.kernel_clock_args(kind),
            f"dbaas.uid={uid}",
            f"dbaas.postgres={spec.image.postgres}",
        ]
        netdevs = []
        for link in LINKS:
            netdev = (
                f"user,id={link.name},restrict=on,net={link.network},"
                f"hostfwd=tcp:127.0.0.1:{HOST_PORTS[link.name]}-{link.guest}:{GUEST_PORT}"
            )
            if link is ADMIN_LINK and spec.registrar_dir is not None:
                # restrict=on holds for everything but the forwards named here.
                # socat waits a while for a registrar that is restarting, as the
                # module does for the sandbox's socket. (",," is a comma to QEMU.)
                address, port = REGISTRAR_FORWARD
                netdev += (
                    f",guestfwd=tcp:{address}:{port}-cmd:/usr/bin/socat STDIO "
                    f"UNIX-CONNECT:{REGISTRAR_PATH},,retry=100,,interval=0.05"
                )
            netdevs += [
                "-netdev",
                netdev,
                "-device",
                f"virtio-net-device,netdev={link.name},mac={link.mac}",
            ]
        return [
            accel.QEMU,
            *accel.machine_args(kind),
            "-m",
            str(self.guest_memory_mb(spec)),
            "-smp",
            str(self.guest_cpus(spec)),
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-kernel",
            f"/guest/{guest.kernel.name}",
            "-initrd",
            "/guest/initramfs.cpio",
            "-append",
            " ".join(kernel_args),
            # The console (kernel, init and postgres' own log) goes to the
            # instance's log, as the sandbox's postgres output does.
            "-chardev",
            "stdio,id=console,signal=off",
            "-serial",
            "chardev:console",
            "-fsdev",
            "local,id=image,path=/image,security_model=none,readonly=on",
            "-device",
            "virtio-9p-device,fsdev=image,mount_tag=image",
            "-fsdev",
            "local,id=data,path=/data,security_model=none",
            "-device",
            "virtio-9p-device,fsdev=data,mount_tag=data",
            *netdevs,
            "-chardev",
            "socket,id=control,path=/run/control/control.sock,server=on,wait=off",
            "-device",
            "virtio-serial-device",
            "-device",
            "virtconsole,chardev=control",
        ]

    def _wait_ready(self, iid: str, pid: int, timeout: float) -> None:
        # postgres' own "ready" (postmaster.pid, through 9p), then the forwarders.
        deadline = time.monotonic() + timeout
        super()._wait_ready(iid, pid, timeout)
        for directory in (self.socket_dir(iid), self.admin_socket_dir(iid)):
            while not (directory / ".s.PGSQL.5432").exists():
                if time.monotonic() > deadline:
                    self.stop(iid)
                    raise InstanceError(f"the forwarder into {iid} did not start")
                time.sleep(0.01)

    # -- asking the guest -------------------------------------------------------------

    def _ask_guest(self, instance_id: str, request: str) -> None:
        """Send one request line to the guest's init over the control port."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(5)
            try:
                conn.connect(str(self._control_socket(instance_id)))
                conn.sendall(f"{request}\n".encode())
            except OSError as exc:
                # Gone already, or not listening yet: the signals that follow
                # in stop() do the rest.
                raise ProcessLookupError(f"control port of {instance_id}: {exc}") from exc

    def _reload(self, instance_id: str, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._ask_guest(instance_id, "reload")

    def _stop_requests(self, instance_id: str, pid: int) -> list[tuple[Callable[[], None], float]]:
        terminate: list[tuple[Callable[[], None], float]] = [
            (functools.partial(os.kill, pid, signal.SIGTERM), 0.15),
            (functools.partial(os.kill, pid, signal.SIGKILL), 0.05),
        ]
        if self.status(instance_id).state is not InstanceState.RUNNING:
            # Still booting (or hung at it): no postgres to shut down cleanly,
            # maybe no init to ask. QEMU ends the machine at once.
            return terminate
        # The guest's init has postgres shut down fast (SIGINT), then ends the machine.
        return [(functools.partial(self._ask_or_signal, instance_id, pid), 0.8), *terminate]

    def _ask_or_signal(self, instance_id: str, pid: int) -> None:
        try:
            self._ask_guest(instance_id, "stop")
        except ProcessLookupError:
            os.kill(pid, signal.SIGTERM)


def _merged_usr_links() -> list[str]:
    """/bin, /lib, ... as links into /usr, as on the host (Debian merged /usr)."""
    args = []
    for name in ("bin", "sbin", "lib", "lib64"):
        if Path(f"/{name}").is_symlink():
            args += ["--symlink", f"usr/{name}", f"/{name}"]
    return args
