"""The sandbox runtime: each instance's postgres runs under bubblewrap in its own pid,
ipc, uts, net, cgroup and mount namespaces, with the image as a read-only root.

Inside the sandbox the only writable paths are /data (the instance's data directory)
and /run/postgresql (its socket directory, which the host's pooler reaches); there is
no network at all. As root, bubblewrap builds the namespaces and `setpriv` then drops
to the instance's own uid with no capabilities; as an ordinary user, bubblewrap uses
an unprivileged user namespace instead.

As root, an instance's data is layered (unikernel_images/overlay.py): the image's
template cluster, shared, under the instance's own layer (`<instance>/layer/
{upper,work,lower}`, lower a link to the shared template or, for data restored or
moved in, to an empty directory), mounted at `<instance>/data` only in the mount
namespace the instance runs in. As an ordinary user, `<instance>/data` is a plain
copy of the template.

Whether an instance runs is decided by a lock, not by pids: the launcher takes an
exclusive flock on `instance.lock` and hands the descriptor to the sandbox, so the
lock is held exactly as long as any process of the instance lives.
"""

import fcntl
import functools
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from unikernel_images import cgroups, overlay, page_cache
from unikernel_images.image import REGISTRAR_DIR, SUPERUSER, Image, pg_tool
from unikernel_images.runtimes.base import (
    ExportStream,
    InstanceError,
    InstanceSpec,
    InstanceState,
    InstanceStatus,
    Runtime,
    allocated_bytes,
    render_postgres_config,
)

POLL = 0.003  # seconds between readiness checks; start-up takes ~30 ms
# How long the instance lock must be seen held (or free) before it counts: others
# probe it by taking it for an instant (status(), the crash watch).
PROBE_PATIENCE = 0.5
# In base/: template1, template0 and postgres (initdb's OIDs since PostgreSQL 15),
# and temporary files.
NOT_TENANT_DATA = frozenset({"1", "4", "5", "pgsql_tmp"})


# How long the launch's chain of programs (unshare, mount, setsid, bwrap, ...) may
# take to hand over the server's pid.
LAUNCH_TIMEOUT = 30


class SandboxRuntime(Runtime):
    kind = "sandbox"

    def data_dir(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "data"

    # -- the layered data directory (unikernel_images/overlay.py) ---------------------

    def _layer(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "layer"

    def _layered(self, instance_id: str) -> bool:
        return (self._layer(instance_id) / "upper").is_dir()

    def _own_files(self, instance_id: str) -> Path:
        """Where the files the instance wrote itself are (postmaster.pid, and all it
        changed), readable without the overlay mounted."""
        if self._layered(instance_id):
            return self._layer(instance_id) / "upper"
        return self.data_dir(instance_id)

    def _mount_command(self, instance_id: str) -> list[str]:
        layer = self._layer(instance_id)
        # The mount point (a crash between a layer's rename and its making leaves none).
        self.data_dir(instance_id).mkdir(mode=0o700, exist_ok=True)
        return overlay.mount_command(
            layer / "lower", layer / "upper", layer / "work", self.data_dir(instance_id)
        )

    def _read_data_file(self, instance_id: str, name: str) -> str:
        """A file of the cluster as the instance sees it (its own, else the template's)."""
        own = self._own_files(instance_id) / name
        if own.exists() or not self._layered(instance_id):
            return own.read_text()
        return (self._layer(instance_id) / "lower" / name).read_text()

    def with_data(self, instance_id: str) -> list[str]:
        """The command prefix that runs what follows with the instance's data at
        data_dir, as the instance sees it (nothing for a plain copy): for reading it
        whole while the instance is stopped (an offline backup), or an operator's
        repair."""
        if not self._layered(instance_id):
            return []
        mount = shlex.join(self._mount_command(instance_id))
        return [*overlay.private_namespace(), "sh", "-c", f'{mount} && exec "$@"', "sh"]

    def _settings_dir(self, instance_id: str) -> Path:
        """Where to write the instance's settings files: into its own layer while it
        is stopped; through its own view of its data while it runs (the overlay
        exists only in its mount namespace, and the layer under a mounted overlay
        must not be changed)."""
        if not self._layered(instance_id):
            return self.data_dir(instance_id)
        status = self.status(instance_id)
        if status.state is not InstanceState.STOPPED and status.pid is not None:
            return Path(f"/proc/{status.pid}/root/data")
        return self._layer(instance_id) / "upper"

    def _shared_template(self, image: Image) -> Path:
        """The image's template as every layered instance of it shares it, made once
        (a copy whose files the instances' uids may open: see overlay.py)."""
        shared = image.path / "shared"
        layer = shared / "layer"
        if layer.exists():
            return layer
        shared.mkdir(mode=0o700, exist_ok=True)
        lock_fd = os.open(shared / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            if not layer.exists():
                staging = shared / "layer.partial"
                shutil.rmtree(staging, ignore_errors=True)
                _copy_template(image.template, staging)
                overlay.shareable(staging)
                _run(["sync", "-f", str(staging)])
                staging.rename(layer)
        finally:
            os.close(lock_fd)
        return layer

    def _empty_lower(self) -> Path:
        """The lower layer of data restored or moved in: nothing below it."""
        empty = self.instances_dir / ".empty"
        empty.mkdir(mode=0o755, exist_ok=True)
        return empty

    def _layers_possible(self, spec: InstanceSpec) -> bool:
        # Mounting needs root; an ordinary user's instances are plain copies.
        return os.geteuid() == 0 and spec.uid is not None

    def data_usage(self, instance_id: str) -> int:
        # Each database is a directory of base/ named by its OID; initdb gives the
        # platform's (template1, template0, postgres) fixed ones. pgsql_tmp holds
        # temporary files, limited apart (temp_file_limit); pg_wal is not in base/.
        # Of a layered instance too, the whole of its databases as it sees them
        # (pg_database_size's view), shared template files included: what an owner
        # counts does not depend on how the host stores it.
        if self._layered(instance_id):
            layer = self._layer(instance_id)
            upper, lower = layer / "upper" / "base", layer / "lower" / "base"
            names = {e.name for e in overlay.entries(upper) + overlay.entries(lower)}
            return sum(
                overlay.merged_bytes(lower / name, upper / name) for name in names - NOT_TENANT_DATA
            )
        base = self.data_dir(instance_id) / "base"
        try:
            databases = [d for d in base.iterdir() if d.name not in NOT_TENANT_DATA]
        except FileNotFoundError:
            return 0
        return sum(allocated_bytes(d) for d in databases)

    def _lock_file(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "instance.lock"

    def _pid_file(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "instance.json"

    # -- lifecycle ---------------------------------------------------------------

    def create(self, spec: InstanceSpec) -> None:
        inst = self.instance_dir(spec.instance_id)
        data = self.data_dir(spec.instance_id)
        if self._has_data(spec.instance_id):
            raise InstanceError(f"instance {spec.instance_id} already has data in {inst}")
        inst.mkdir(parents=True, exist_ok=True)
        os.chmod(inst, 0o711)
        if self._layers_possible(spec):
            self._create_layered(spec)
            return
        # Prepare next to the final place, then rename: a crash never leaves a
        # half-made data directory that looks complete.
        staging = inst / "data.partial"
        shutil.rmtree(staging, ignore_errors=True)
        if not self._claim_spare(spec, staging):
            _copy_template(spec.image.template, staging)
        self._render_config(spec, staging)
        if spec.uid is not None:
            _run(["chown", "-R", f"{spec.uid}:{spec.uid}", str(staging)])
        staging.rename(data)
        _run(["sync", "-f", str(data)])
        self._make_socket_dir(spec)

    def _create_layered(self, spec: InstanceSpec) -> None:
        """A layer of its own over the image's shared template: nothing is copied
        but the settings it is given. Made beside, then renamed into place."""
        iid = spec.instance_id
        staging = self.instance_dir(iid) / "layer.partial"
        shutil.rmtree(staging, ignore_errors=True)
        self._make_layer(staging, self._shared_template(spec.image), spec)
        self._render_config(spec, staging / "upper")
        _run(["sync", "-f", str(staging)])
        staging.rename(self._layer(iid))
        self.data_dir(iid).mkdir(mode=0o700, exist_ok=True)  # where it is mounted
        self._make_socket_dir(spec)

    def _make_layer(
        self, layer: Path, lower: Path, spec: InstanceSpec, upper: Path | None = None
    ) -> None:
        """`layer` with `upper` (or an empty one) over `lower`."""
        layer.mkdir(mode=0o700)
        if upper is None:
            (layer / "upper").mkdir(mode=0o700)
        else:
            upper.rename(layer / "upper")
        (layer / "work").mkdir(mode=0o700)
        (layer / "lower").symlink_to(lower)
        if spec.uid is not None:
            os.chown(layer / "upper", spec.uid, spec.uid)

    def _has_data(self, instance_id: str) -> bool:
        return self._layered(instance_id) or (self.data_dir(instance_id) / "PG_VERSION").exists()

    # -- spares: template copies made ahead of time ---------------------------------
    # Copying the ~40 MB template and syncing it is most of a provisioning's time,
    # so the host keeps a few copies ready; a claim is a rename.

    def _spares_dir(self, image: Image) -> Path:
        return self.instances_dir / ".spares" / image.manifest["content_hash"][:12]

    def _claim_spare(self, spec: InstanceSpec, dest: Path) -> bool:
        spares = self._spares_dir(spec.image)
        for candidate in sorted(spares.glob("ready-*")) if spares.exists() else []:
            try:
                candidate.rename(dest)  # atomic: two claimers cannot get the same one
            except FileNotFoundError:
                continue
            return True
        return False

    def prepare_spares(self, image: Image, count: int) -> int:
        if os.geteuid() == 0:
            # Layered instances copy nothing: no spares (and none left behind).
            shutil.rmtree(self.instances_dir / ".spares", ignore_errors=True)
            self._shared_template(image)  # made ahead, as spares were
            return 0
        spares = self._spares_dir(image)
        spares.mkdir(parents=True, exist_ok=True)
        os.chmod(spares, 0o700)
        lock_fd = os.open(spares / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        made = 0
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # another worker process is refilling
            for leftover in spares.glob("partial-*"):  # from a worker that died copying
                shutil.rmtree(leftover, ignore_errors=True)
            while len(list(spares.glob("ready-*"))) < count:
                staging = spares / f"partial-{time.time_ns()}"
                _copy_template(image.template, staging)
                _run(["sync", "-f", str(staging)])
                staging.rename(spares / f"ready-{time.time_ns()}")
                made += 1
        finally:
            os.close(lock_fd)
        # Spares of older images are never claimed again.
        for old in spares.parent.iterdir():
            if old != spares:
                shutil.rmtree(old, ignore_errors=True)
        return made

    def _make_socket_dir(self, spec: InstanceSpec) -> None:
        sockets = self.socket_dir(spec.instance_id)
        sockets.mkdir(exist_ok=True)
        if spec.uid is not None:
            gid = _group_id(spec.socket_group) if spec.socket_group else spec.uid
            os.chown(sockets, spec.uid, gid)
        # Only the instance (owner) and the pooler's group may enter.
        os.chmod(sockets, 0o750)

    def configure(self, spec: InstanceSpec) -> None:
        if not self._has_data(spec.instance_id):
            raise InstanceError(f"instance {spec.instance_id} has no data directory")
        if self._render_config(spec, self._settings_dir(spec.instance_id)):
            status = self.status(spec.instance_id)
            if status.state is InstanceState.RUNNING and status.pid:
                self._reload(spec.instance_id, status.pid)

    def _render_config(self, spec: InstanceSpec, data_dir: Path) -> bool:
        """Write the instance's settings into `data_dir`; True if any changed."""
        return render_postgres_config(self.kind, spec, data_dir)

    def _reload(self, instance_id: str, pid: int) -> None:
        """Have the running server reread its settings files."""
        os.kill(pid, signal.SIGHUP)

    def start(self, spec: InstanceSpec, timeout: float = 30) -> None:
        iid = spec.instance_id
        if not self._has_data(iid):
            raise InstanceError(f"instance {iid} has no data directory; create it first")
        lock_fd = os.open(self._lock_file(iid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if not _lock_unless_held(lock_fd):
                # Started already (starting is idempotent), perhaps by someone else
                # a moment ago: return only once it accepts queries.
                self._wait_running(iid, timeout)
                return
            self._make_socket_dir(spec)
            if spec.registrar_dir is not None:
                # Bound into the instance: traversable, not listable, by its uid.
                spec.registrar_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
            # The lock proves no postmaster of ours is alive, so a postmaster.pid
            # left by a killed one is stale; postgres cannot tell across pid
            # namespaces (it sees its own pid 1 in the file). Our own record of
            # the old pid goes too, so nobody signals a recycled pid.
            (self._own_files(iid) / "postmaster.pid").unlink(missing_ok=True)
            self._pid_file(iid).unlink(missing_ok=True)
            # What every instance of the image reads, cached on the host's
            # account before this one reads it on its own (page_cache.py).
            template = self._shared_template(spec.image) if self._layered(iid) else None
            page_cache.keep_on_host(spec.image.rootfs, template)
            pid = self._launch(spec, lock_fd)
        finally:
            os.close(lock_fd)
        self._pid_file(iid).write_text(json.dumps({"pid": pid, "started": time.time()}))
        self._wait_ready(iid, pid, timeout)

    def _launch(self, spec: InstanceSpec, lock_fd: int) -> int:
        info_r, info_w = os.pipe()
        log = open(self.log_file(spec.instance_id), "ab")  # noqa: SIM115 - handed to the child
        try:
            os.set_inheritable(lock_fd, True)
            # `setsid -f` detaches the sandbox from the caller: a worker that
            # dies or restarts does not take the tenant's postgres with it.
            launcher = subprocess.Popen(
                [
                    *self._limited(spec),
                    "setsid",
                    "-f",
                    *self._bwrap_args(spec, info_w),
                    *self._command(spec),
                ],
                pass_fds=(info_w, lock_fd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                env={"PATH": "/usr/bin:/bin"},
            )
            os.close(info_w)
            info_w = -1
            # Seconds, not milliseconds, in the normal case; but bench/density.py
            # saw a host of ~9,500 databases with hundreds awake stall for over
            # 10 s, and a start must not fail for that.
            launcher.wait(timeout=LAUNCH_TIMEOUT)
            return _read_child_pid(
                info_r, timeout=LAUNCH_TIMEOUT, log=self.log_file(spec.instance_id)
            )
        finally:
            log.close()
            os.close(info_r)
            if info_w != -1:
                os.close(info_w)

    def _limited(self, spec: InstanceSpec) -> list[str]:
        """The start of the launch command: the instance's data mounted (in a mount
        namespace of its own, which the sandbox inherits), its cgroups joined and
        each of its processes' memory capped (every process it forks inherits
        both): a backend that asks for more than the plan's memory gets "out of
        memory", and all of them together cannot take more than the plan's memory."""
        iid = spec.instance_id
        steps, prefix = [], []
        if self._layered(iid):
            prefix = overlay.private_namespace()
            steps.append(shlex.join(self._mount_command(iid)))
        limits = self._host_limits(spec)
        if limits is not None and (groups := cgroups.detect()) is not None:
            groups.apply(iid, limits)
            procs = " ".join(shlex.quote(str(path)) for path in groups.procs_files(iid))
            steps.append(f'for procs in {procs}; do echo $$ > "$procs"; done')
        if steps:
            prefix += ["sh", "-c", " && ".join([*steps, 'exec "$@"']), "sh"]
        prefix += self._process_limits(spec)
        # A tenant serves at the normal CPU priority whoever starts it: the host's
        # background work (backups, reconcile) runs niced, and its children would
        # inherit that (root may lower a niceness; anyone else keeps it).
        if (niceness := os.getpriority(os.PRIO_PROCESS, 0)) > 0 and os.geteuid() == 0:
            prefix += ["nice", "-n", str(-niceness)]
        return prefix

    def _host_limits(self, spec: InstanceSpec) -> cgroups.Limits | None:
        """What the instance's processes on the host may use together (its groups)."""
        return spec.limits

    def _process_limits(self, spec: InstanceSpec) -> list[str]:
        """The command prefix that limits each process of the instance."""
        if spec.limits is None:
            return []
        return ["prlimit", f"--as={spec.limits.process_address_space_bytes}", "--"]

    def _bwrap_args(self, spec: InstanceSpec, info_fd: int) -> list[str]:
        iid = spec.instance_id
        if os.geteuid() == 0:
            # Root builds the namespaces itself; setpriv drops privileges inside.
            namespaces = [
                "--unshare-pid",
                "--unshare-net",
                "--unshare-ipc",
                "--unshare-uts",
                "--unshare-cgroup-try",
            ]
        else:
            namespaces = ["--unshare-all"]  # includes an unprivileged user namespace
        return [
            "bwrap",
            *namespaces,
            "--as-pid-1",
            "--new-session",
            "--hostname",
            iid[:63],
            "--ro-bind",
            str(spec.image.rootfs),
            "/",
            "--bind",
            str(self.data_dir(iid)),
            "/data",
            "--bind",
            str(self.socket_dir(iid)),
            "/run/postgresql",
            *(["--bind", str(spec.registrar_dir), REGISTRAR_DIR] if spec.registrar_dir else []),
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--perms",
            "1777",
            "--tmpfs",
            "/tmp",
            "--perms",
            "1777",
            "--tmpfs",
            "/dev/shm",
            "--clearenv",
            "--setenv",
            "TZ",
            "UTC",
            "--setenv",
            "LANG",
            "C",
            "--chdir",
            "/",
            "--info-fd",
            str(info_fd),
        ]

    def _command(self, spec: InstanceSpec) -> list[str]:
        return [*drop_privileges(spec), spec.image.postgres, "-D", "/data"]

    def _wait_ready(self, iid: str, pid: int, timeout: float) -> None:
        """Return once postmaster.pid says `ready`: never expose a starting instance."""
        pidfile = self._own_files(iid) / "postmaster.pid"
        deadline = time.monotonic() + timeout
        while True:
            try:
                lines = pidfile.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return
            except FileNotFoundError:
                pass
            if not _alive(pid):
                raise InstanceError(f"postgres exited during start-up: {self._log_tail(iid)}")
            if time.monotonic() > deadline:
                self.stop(iid)
                raise InstanceError(
                    f"postgres not ready after {timeout:.0f} s: {self._log_tail(iid)}"
                )
            time.sleep(POLL)

    def _wait_running(self, iid: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (state := self.status(iid).state) is not InstanceState.RUNNING:
            if state in (InstanceState.STOPPED, InstanceState.MISSING):
                raise InstanceError(f"postgres exited during start-up: {self._log_tail(iid)}")
            if time.monotonic() > deadline:
                raise InstanceError(f"postgres not ready after {timeout:.0f} s")
            time.sleep(POLL)

    def stop(self, instance_id: str, timeout: float = 30) -> None:
        status = self.status(instance_id)
        # A start under way holds the lock a moment before it records the pid.
        recorded_by = time.monotonic() + min(timeout, 5)
        while (
            status.pid is None
            and status.state not in (InstanceState.STOPPED, InstanceState.MISSING)
            and time.monotonic() < recorded_by
        ):
            time.sleep(POLL)
            status = self.status(instance_id)
        if status.state is InstanceState.STOPPED:
            self._release_groups(instance_id)  # of one that ended on its own
            return
        if status.state is InstanceState.MISSING:
            return
        if status.pid is None:
            # Its starter died between launching it and recording the pid: find
            # the postmaster among the processes that hold the instance's lock.
            status = InstanceStatus(
                status.state, pid=_postmaster_holding(self._lock_file(instance_id))
            )
        if status.pid is None:
            raise InstanceError(f"instance {instance_id} is running but its pid is unknown")
        deadline = time.monotonic() + timeout
        for ask, share in self._stop_requests(instance_id, status.pid):
            try:
                ask()
            except ProcessLookupError:
                break
            if self._wait_stopped(instance_id, time.monotonic() + timeout * share):
                break
            if time.monotonic() > deadline:
                break
        # Held throughout a moment, not at one look: a probe of the lock (status(),
        # the crash watch, told of this very exit) takes it for an instant, and a
        # server gone leaves its pid namespace's last processes a few ms to go.
        if not self._wait_stopped(instance_id, time.monotonic() + PROBE_PATIENCE):
            raise InstanceError(f"instance {instance_id} did not stop")
        self._pid_file(instance_id).unlink(missing_ok=True)
        self._release_groups(instance_id)

    def _release_groups(self, instance_id: str) -> None:
        """A stopped instance's cgroups go (a start makes them again). Memory
        reclaim walks every memory cgroup there is: with one per sleeping database,
        a host of ~10,000 spent most of its CPU in the kernel reclaiming and stalled
        for seconds at a time (bench/density.py, docs/density.md). Under the
        instance's lock, so that a start under way keeps the groups it just made."""
        if (groups := cgroups.detect()) is None:
            return
        try:
            fd = os.open(self._lock_file(instance_id), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            groups.remove(instance_id)  # never started here
            return
        try:
            if _lock_unless_held(fd):
                groups.remove(instance_id)
        finally:
            os.close(fd)

    def _stop_requests(self, instance_id: str, pid: int) -> list[tuple[Callable[[], None], float]]:
        """How to stop the instance whose first process is `pid`, in turn, each only
        if the last did not stop it, with its share of the time allowed.

        SIGINT to the postmaster = fast shutdown: roll back sessions, checkpoint,
        exit cleanly. Then immediate shutdown, then SIGKILL."""
        return [
            (functools.partial(os.kill, pid, signal.SIGINT), 0.8),
            (functools.partial(os.kill, pid, signal.SIGQUIT), 0.15),
            (functools.partial(os.kill, pid, signal.SIGKILL), 0.05),
        ]

    def _wait_stopped(self, instance_id: str, until: float) -> bool:
        while time.monotonic() < until:
            if not self._lock_held(instance_id):
                return True
            time.sleep(POLL)
        return not self._lock_held(instance_id)

    def is_stopped(self, instance_id: str) -> bool:
        # The lock alone, not the files status() reads after it: the crash watch
        # asks this at each server's exit and of every running tenant at its
        # passes (59 us a call for status(), 7 for the lock, measured here).
        return self._has_data(instance_id) and not self._lock_held(instance_id)

    def recorded_pid(self, instance_id: str) -> int | None:
        try:
            return int(json.loads(self._pid_file(instance_id).read_text())["pid"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None  # the starter has not recorded it yet

    def status(self, instance_id: str) -> InstanceStatus:
        if not self._has_data(instance_id):
            return InstanceStatus(InstanceState.MISSING)
        if not self._lock_held(instance_id):
            return InstanceStatus(InstanceState.STOPPED)
        pid = self.recorded_pid(instance_id)
        if pid is not None and not _alive(pid):
            pid = None
        # The lock is held, so postmaster.pid is this instance's (start removes
        # a stale one before launching): its status line says how far it got.
        try:
            lines = (self._own_files(instance_id) / "postmaster.pid").read_text().splitlines()
            phase = lines[7].strip() if len(lines) >= 8 else "starting"
        except FileNotFoundError:
            phase = "starting"
        state = {"ready": InstanceState.RUNNING, "stopping": InstanceState.STOPPING}.get(
            phase, InstanceState.STARTING
        )
        return InstanceStatus(state, pid=pid)

    # -- backup and restore ---------------------------------------------------------

    def export_data(self, instance_id: str) -> ExportStream:
        state = self.status(instance_id).state
        if state is InstanceState.RUNNING:
            # Online: a base backup over the instance's socket, WAL included, as
            # one tar stream on stdout (never staged on disk or in memory).
            # The client of the server's own major (its data directory says which).
            major = self._read_data_file(instance_id, "PG_VERSION").strip()
            args = [
                pg_tool(major, "pg_basebackup"),
                "-h",
                str(self.admin_socket_dir(instance_id)),
                "-U",
                SUPERUSER,
                "-D",
                "-",
                "-F",
                "tar",
                "-X",
                "fetch",
                "--checkpoint=fast",
                "-w",
            ]
            what = "pg_basebackup"
        elif state is InstanceState.STOPPED:
            # Asleep: its cleanly shut-down directory is consistent as it is (a
            # layered one read through its overlay, in a namespace of the tar's own).
            args = [
                *self.with_data(instance_id),
                "tar",
                "-C",
                str(self.data_dir(instance_id)),
                "-cf",
                "-",
                "--exclude=./postmaster.pid",
                "--exclude=./postmaster.opts",
                ".",
            ]
            what = "tar"
        else:
            raise InstanceError(f"instance {instance_id} cannot be backed up while {state}")
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
        return ExportStream(proc, what)

    def _incoming(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "data.incoming"

    def _previous(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "data.previous"

    def import_data(self, spec: InstanceSpec, chunks) -> None:
        self.instance_dir(spec.instance_id).mkdir(parents=True, exist_ok=True)
        os.chmod(self.instance_dir(spec.instance_id), 0o711)
        incoming = self._incoming(spec.instance_id)
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir(mode=0o700, parents=True)
        proc = subprocess.Popen(
            ["tar", "-C", str(incoming), "-xf", "-"], stdin=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdin is not None and proc.stderr is not None  # both piped
        try:
            try:
                for chunk in chunks:
                    proc.stdin.write(chunk)
            except BrokenPipeError:
                # tar stopped reading (it refused what it got): the stream's own
                # check, at its end, usually says why better than tar does.
                for _chunk in chunks:
                    pass
                raise InstanceError(
                    f"tar failed: {proc.stderr.read().decode().strip()[-500:]}"
                ) from None
            proc.stdin.close()
            if proc.wait(timeout=600) != 0:
                raise InstanceError(f"tar failed: {proc.stderr.read().decode().strip()[-500:]}")
            if not (incoming / "PG_VERSION").exists():
                raise InstanceError("the backup holds no PostgreSQL data directory")
            (incoming / "postmaster.pid").unlink(missing_ok=True)
            self._render_config(spec, incoming)
            if spec.uid is not None:
                _run(["chown", "-R", f"{spec.uid}:{spec.uid}", str(incoming)])
            _run(["sync", "-f", str(incoming)])
        except BaseException:
            proc.kill()
            proc.wait()
            shutil.rmtree(incoming, ignore_errors=True)
            raise

    def _previous_layer(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "layer.previous"

    def _current(self, instance_id: str) -> Path:
        """Where the instance's data is: its layer, or a plain data directory."""
        return (
            self._layer(instance_id) if self._layered(instance_id) else self.data_dir(instance_id)
        )

    def _kept(self, instance_id: str) -> tuple[Path, Path] | None:
        """The data swap_in_imported kept, and where it goes back to."""
        if self._previous_layer(instance_id).exists():
            return self._previous_layer(instance_id), self._layer(instance_id)
        if self._previous(instance_id).exists():
            return self._previous(instance_id), self.data_dir(instance_id)
        return None

    def swap_in_imported(self, spec: InstanceSpec) -> None:
        iid = spec.instance_id
        if self.status(iid).state not in (InstanceState.STOPPED, InstanceState.MISSING):
            raise InstanceError(f"instance {iid} must be stopped to swap its data")
        self.drop_previous(iid, keep_incoming=True)
        current = self._current(iid)
        if current.exists():  # a new instance made from a backup has none
            layered = current == self._layer(iid)
            current.rename(self._previous_layer(iid) if layered else self._previous(iid))
        if self._layers_possible(spec):
            # The imported cluster is whole: a layer over nothing.
            self._make_layer(self._layer(iid), self._empty_lower(), spec, upper=self._incoming(iid))
            self.data_dir(iid).mkdir(mode=0o700, exist_ok=True)  # where it is mounted
        else:
            self._incoming(iid).rename(self.data_dir(iid))
        self._make_socket_dir(spec)

    def swap_back(self, spec: InstanceSpec) -> None:
        iid = spec.instance_id
        self.stop(iid)
        kept = self._kept(iid)
        if kept is None:
            raise InstanceError(f"instance {iid} has no data kept to swap back to")
        failed = self._incoming(iid)
        shutil.rmtree(failed, ignore_errors=True)
        self._current(iid).rename(failed)
        kept[0].rename(kept[1])
        shutil.rmtree(failed, ignore_errors=True)

    def drop_previous(self, instance_id: str, keep_incoming: bool = False) -> None:
        shutil.rmtree(self._previous(instance_id), ignore_errors=True)
        shutil.rmtree(self._previous_layer(instance_id), ignore_errors=True)
        if not keep_incoming:
            shutil.rmtree(self._incoming(instance_id), ignore_errors=True)

    def import_leftovers(self, instance_id: str) -> bool:
        return any(
            path.exists()
            for path in (
                self._incoming(instance_id),
                self._previous(instance_id),
                self._previous_layer(instance_id),
            )
        )

    def abandon_import(self, spec: InstanceSpec) -> bool:
        iid = spec.instance_id
        incoming, kept = self._incoming(iid), self._kept(iid)
        if kept is None:  # the swap never began: the data is the current one
            _remove_tree(incoming)
            return False
        self.stop(iid)
        _remove_tree(incoming)
        current = self._current(iid)
        if current.exists():  # swapped in already (it may not have started)
            current.rename(incoming)
        kept[0].rename(kept[1])
        _remove_tree(incoming)
        return True

    def destroy(self, instance_id: str) -> None:
        super().destroy(instance_id)
        if (groups := cgroups.detect()) is not None:
            groups.remove(instance_id)

    def _lock_held(self, instance_id: str) -> bool:
        try:
            fd = os.open(self._lock_file(instance_id), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases a lock we may just have taken
        return False

    def _log_tail(self, instance_id: str, lines: int = 5) -> str:
        try:
            text = self.log_file(instance_id).read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])


def drop_privileges(spec: InstanceSpec, groups: tuple[int, ...] = ()) -> list[str]:
    """The command prefix that runs what follows as the instance's own uid (and only
    `groups` besides), with no capabilities and no way to gain any; nothing when the
    platform is not root or the instance has no uid of its own."""
    if os.geteuid() != 0 or spec.uid is None:
        return []
    uid = str(spec.uid)
    return [
        "/usr/bin/setpriv",
        "--reuid",
        uid,
        "--regid",
        uid,
        *(["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]),
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]


def _lock_unless_held(fd: int, patience: float = PROBE_PATIENCE) -> bool:
    """Take the instance lock; False if an instance holds it.

    status() takes the lock for an instant to test it: a start that meets such a
    probe must not take it for a running instance, so it tries again for a while
    (an instance holds the lock for its whole life, a probe for microseconds, or
    a few milliseconds on a CPU that is saturated)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)


def _remove_tree(path: Path, patience: float = 10.0) -> None:
    """Remove `path` even while the last writes of a process killed meanwhile (an
    unpacking tar) still land in it: removal is tried again until it is gone."""
    deadline = time.monotonic() + patience
    while True:
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def _read_child_pid(fd: int, timeout: float, log: Path) -> int:
    """bubblewrap writes {"child-pid": N} to its info fd once the sandbox exists."""
    buf = b""
    deadline = time.monotonic() + timeout
    poller = select.poll()  # not select(): a busy host's descriptors pass 1023
    poller.register(fd, select.POLLIN)
    while time.monotonic() < deadline:
        if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        try:
            return int(json.loads(buf)["child-pid"])
        except (ValueError, KeyError):
            continue
    tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
    raise InstanceError(f"bubblewrap did not start the sandbox: {tail.strip()}")


def _copy_template(template: Path, dest: Path) -> None:
    _run(["cp", "-a", "--reflink=auto", str(template), str(dest)])
    os.chmod(dest, 0o700)


def _postmaster_holding(lock: Path) -> int | None:
    """The process holding `lock` whose parent does not: the instance's postmaster
    (its children inherit the descriptor; bubblewrap, its parent, closes it)."""
    holders: dict[int, int] = {}
    target = str(lock)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == target for fd in (proc / "fd").iterdir()):
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                holders[int(proc.name)] = int(stat[1])
        except (FileNotFoundError, PermissionError, ProcessLookupError, IndexError):
            continue
    roots = [pid for pid, parent in holders.items() if parent not in holders]
    return roots[0] if len(roots) == 1 else None


def _alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as dead."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        # ProcessLookupError: it went between the open and the read (reaped).
        return False


def _group_id(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid


def _run(args: list[str], timeout: float = 60) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise InstanceError(f"{args[0]} failed: {proc.stderr.strip()[-1000:]}")
