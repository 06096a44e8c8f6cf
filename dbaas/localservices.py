"""The platform's own control-plane PostgreSQL cluster and Redis, under DBAAS_DATA_DIR.

Used by `make run` and `make test`; skipped when DATABASE_URL / REDIS_URL point elsewhere.
Run as `python -m dbaas.localservices start|stop|status|watch`; `watch` (run by
`make run` beside the other processes) starts again whichever of them stops.
"""

import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

from dbaas.env import BASE_DIR, controlplane_user, env_bool, redis_user, services_dir
from dbaas.files import chown, grant_traversal, make_dir, render_template, write_atomic

POSTGRES_LIB_ROOT = Path("/usr/lib/postgresql")
TEMPLATES = BASE_DIR / "dbaas"


def _run_as(user: str, args: list[str], timeout: float = 60) -> str:
    proc = subprocess.run(
        args,
        user=user if os.geteuid() == 0 else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def running_as(pidfile: Path) -> str | None:
    """The account of the process a pid file names, if it runs."""
    try:
        pid = int(pidfile.read_text().split()[0])
        return pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name
    except (FileNotFoundError, ValueError, IndexError, KeyError):
        return None


def adopt(path: Path, user: str) -> None:
    """Give `path` (and what is in it) to `user` if someone else owns it: state made
    when one account ran every service is taken over by the one that runs it now."""
    if os.geteuid() != 0 or not path.exists():
        return
    uid = pwd.getpwnam(user).pw_uid
    if path.stat().st_uid != uid:
        print(f"==> {path} now belongs to {user}")
        subprocess.run(["chown", "-R", f"{user}:{user}", str(path)], check=True)


class ControlPlanePostgres:
    """The metadata cluster: one unix socket, trust auth inside a 0700 socket dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pgdata = root / "controlplane"
        self.bin = self._bin_dir()
        self.socket_dir = root / "run" / "controlplane"
        self.logfile = root / "log" / "controlplane.log"

    def _bin_dir(self) -> Path:
        """The programs of the cluster's own major (a cluster made earlier keeps
        its major when a newer one is installed), else of the newest one here."""
        try:
            major = (self.pgdata / "PG_VERSION").read_text().strip()
        except (FileNotFoundError, PermissionError):
            majors = [p.parent.parent.name for p in POSTGRES_LIB_ROOT.glob("*/bin/postgres")]
            if not majors:
                raise RuntimeError(
                    f"no PostgreSQL is installed under {POSTGRES_LIB_ROOT}"
                ) from None
            major = max(majors, key=int)
        return POSTGRES_LIB_ROOT / major / "bin"

    def is_running(self) -> bool:
        return (
            subprocess.run(
                [str(self.bin / "pg_isready"), "-q", "-h", str(self.socket_dir)], timeout=10
            ).returncode
            == 0
        )

    def start(self) -> None:
        user = controlplane_user()
        make_dir(self.root, 0o755)
        grant_traversal(self.root, user)
        make_dir(self.root / "log", 0o755)
        make_dir(self.root / "run", 0o755)
        owner = running_as(self.pgdata / "postmaster.pid")
        if owner not in (None, user) and os.geteuid() == 0:
            # Started by an earlier version, under the account every service shared.
            print(f"==> restarting the control plane as {user} (it runs as {owner})")
            _run_as(
                owner,
                [str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
            )
        for path in (self.pgdata, self.socket_dir, self.logfile):
            adopt(path, user)
        make_dir(self.socket_dir, 0o700, owner=user)
        if self.is_running():
            return
        if not (self.pgdata / "PG_VERSION").exists():
            print(f"==> creating control-plane cluster in {self.pgdata}")
            make_dir(self.pgdata, 0o700, owner=user)
            _run_as(
                user,
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    "dbaas",
                    "--auth-local=trust",
                    "--auth-host=reject",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
                timeout=120,
            )
            with open(self.pgdata / "postgresql.conf", "a") as conf:
                conf.write("include 'dbaas.conf'\n")
        write_atomic(
            self.pgdata / "dbaas.conf",
            render_template(
                TEMPLATES,
                "controlplane.conf.j2",
                socket_dir=self.socket_dir,
                durable=env_bool("DBAAS_CONTROLPLANE_DURABLE", True),
            ),
            mode=0o600,
            owner=user,
        )
        self.logfile.touch()
        chown(self.logfile, user)
        _run_as(
            user,
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.pgdata),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                "60",
                "start",
            ],
            timeout=90,
        )
        self._ensure_database()

    def _ensure_database(self) -> None:
        psql = ["psql", "-h", str(self.socket_dir), "-U", "dbaas", "-d", "postgres", "-tAc"]
        exists = _run_as(
            controlplane_user(), [*psql, "SELECT 1 FROM pg_database WHERE datname='dbaas'"]
        )
        if exists.strip() != "1":
            _run_as(controlplane_user(), [*psql, "CREATE DATABASE dbaas"])

    def stop(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            _run_as(
                controlplane_user(),
                [str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
            )


class LocalRedis:
    """The Celery broker: unix socket only, append-only file for crash safety."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.workdir = root / "redis"
        self.socket = root / "run" / "redis" / "redis.sock"
        self.pidfile = root / "run" / "redis" / "redis.pid"
        self.conf = self.workdir / "redis.conf"

    def is_running(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2).ping())
        except (redis.RedisError, OSError):
            return False

    def start(self) -> None:
        user = redis_user()
        make_dir(self.root, 0o755)
        grant_traversal(self.root, user)
        make_dir(self.root / "log", 0o755)
        owner = running_as(self.pidfile)
        if owner not in (None, user) and os.geteuid() == 0:
            print(f"==> restarting Redis as {user} (it runs as {owner})")
            self.stop()
        for path in (self.workdir, self.socket.parent, self.root / "log" / "redis.log"):
            adopt(path, user)
        make_dir(self.workdir, 0o700, owner=user)
        make_dir(self.socket.parent, 0o700, owner=user)
        if self.is_running():
            return
        logfile = self.root / "log" / "redis.log"
        logfile.touch()
        chown(logfile, user)
        write_atomic(
            self.conf,
            render_template(
                TEMPLATES,
                "redis.conf.j2",
                socket=self.socket,
                pidfile=self.pidfile,
                logfile=logfile,
                workdir=self.workdir,
            ),
            mode=0o600,
            owner=user,
        )
        _run_as(user, ["redis-server", str(self.conf)])
        deadline = time.monotonic() + 30
        while not self.is_running():
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis did not start; see {logfile}")
            time.sleep(0.05)

    def stop(self) -> None:
        try:
            pid = int(self.pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def managed_services() -> list[ControlPlanePostgres | LocalRedis]:
    """The services this machine must run itself (none that a URL points elsewhere)."""
    root = services_dir()
    services: list[ControlPlanePostgres | LocalRedis] = []
    if not os.environ.get("DATABASE_URL"):
        services.append(ControlPlanePostgres(root))
    if not os.environ.get("REDIS_URL"):
        services.append(LocalRedis(root))
    return services


WATCH_INTERVAL = 1.0


def watch(services: list, interval: float = WATCH_INTERVAL) -> None:
    """Start again, within `interval`, any of `services` that is not running, until
    SIGINT/SIGTERM. They are not stopped on the way out: `manage.py up` does that."""
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"watch: keeping {', '.join(type(s).__name__ for s in services)} running", flush=True)
    while not stopping:
        for service in services:
            if stopping or service.is_running():
                continue
            name = type(service).__name__
            print(f"watch: {name} is not running; starting it", flush=True)
            started = time.monotonic()
            try:
                service.start()
                print(f"watch: {name} is back in {time.monotonic() - started:.1f} s", flush=True)
            except Exception as exc:  # tried again at the next look
                print(f"watch: {name} did not start: {exc}", file=sys.stderr, flush=True)
        time.sleep(interval)


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    if command == "watch":
        watch(managed_services())
        return 0
    for service in managed_services():
        name = type(service).__name__
        if command == "start":
            service.start()
        elif command == "stop":
            service.stop()
        elif command == "status":
            print(f"{name}: {'running' if service.is_running() else 'stopped'}")
        else:
            print(f"usage: {argv[0]} start|stop|status|watch", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
