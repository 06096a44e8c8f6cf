"""`manage.py run_activator`: this host's wake-on-connect path (see poolers/activator.py),
the guard that bans addresses with too many failed logins at the pooler
(poolers/login_guard.py), and the host's heartbeat (tenants/host/heartbeat.py).

Listens on an activator socket for every tenant routed through the host's PgBouncer;
a server connection to a sleeping tenant wakes it and is then passed through.
The registrar of the databases tenants create runs apart (run_registrar): a socket
each per database, in one process, passed the 20,000 files a process may have on
these machines at 10,000 databases (bench/density.py).
"""

import asyncio
import logging
import os
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from dbaas.env import pooler_user
from poolers import firewall, login_guard
from poolers.activator import Activator
from tenants.host import agent, heartbeat, report
from tenants.host.crash_watch import CrashWatch

log = logging.getLogger(__name__)
CRASH_WATCH_RETRY = 0.5  # seconds after a failed round (the host store unreadable...)


def wake(instance_id: str, ready: Callable[[Path], None]) -> Path:
    """Decided on this host, from what it holds: the control plane hears of the
    wake afterwards (a report), and of a failure as an event."""
    try:
        return agent.instance_wake(instance_id, actor="activator", ready=ready)
    except Exception as exc:
        # The client hears it at once (the activator refuses its connection); the
        # operators see why in the tenant's events.
        report.event(
            agent.tenant_pk_for_instance(instance_id),
            "wake_failed",
            "activator",
            f"could not start for a connecting client: {str(exc)[:1000]}",
        )
        raise


def instance_for_role(role: str) -> str | None:
    return agent.instance_for_role(role)


def hand_off(instance_id: str) -> None:
    tenant = agent.store().get(instance_id)
    if tenant is not None:
        agent.pooler_reconnect(tenant)


class Command(BaseCommand):
    help = "Run this host's activator: hold connections to sleeping tenants and wake them."

    def handle(self, *args, **options):
        raise_open_files_limit()
        routes = agent.routes()
        routes.prepare()
        activator = Activator(
            routes,
            wake,
            socket_group=pooler_user() if os.geteuid() == 0 else None,
            handoff=hand_off,
            handoff_delay=settings.DBAAS_ACTIVATOR_HANDOFF_DELAY,
            instance_for_role=instance_for_role,
        )
        self._start_login_guard()
        threading.Thread(
            target=heartbeat.keep_beating, args=(threading.Event(),), name="heartbeat", daemon=True
        ).start()
        threading.Thread(target=self._restart_crashed, name="crash-watch", daemon=True).start()
        self.stdout.write(f"run_activator: listening for the tenants in {routes.root}")
        self.stdout.flush()
        asyncio.run(self._main(activator))

    def _restart_crashed(self) -> None:
        """A running tenant whose server has exited is started again at once, one
        whose disk is full gets room (tenants/host/crash_watch.py)."""
        failing, watch = False, CrashWatch()
        while True:
            try:
                for what in watch.round():
                    log.warning("crash watch: %s", what)
            except Exception:
                if not failing:  # once per outage, not at every round
                    log.exception("crash watch: failing; retrying")
                failing = True
                time.sleep(CRASH_WATCH_RETRY)
            else:
                if failing:
                    log.info("crash watch: working again")
                failing = False

    def _start_login_guard(self) -> None:
        limit = settings.DBAAS_POOLER_LOGIN_FAILURES_PER_ADDRESS
        if limit <= 0 or os.geteuid() != 0:
            self.stderr.write("run_activator: failed logins at the pooler are not limited")
            return
        port, seconds = settings.DBAAS_PGBOUNCER_PORT, settings.DBAAS_POOLER_BAN_SECONDS
        thread = threading.Thread(
            target=login_guard.guard,
            args=([bouncer.log_file for bouncer in agent.poolers()],),
            kwargs={
                "limit": limit,
                "window": settings.DBAAS_POOLER_LOGIN_FAILURE_WINDOW,
                "ban": lambda address: firewall.ban(port, address, seconds),
                "exempt": frozenset(settings.DBAAS_POOLER_LOGIN_GUARD_EXEMPT),
                "stop": threading.Event(),  # the thread ends with the process
            },
            name="login-guard",
            daemon=True,
        )
        thread.start()
        self.stdout.write(
            f"run_activator: {limit} failed pooler logins from one address ban it for {seconds} s"
        )

    async def _main(self, activator: Activator) -> None:
        from concurrent.futures import ThreadPoolExecutor

        # Wakes block on the runtime and the control plane. A start is mostly CPU
        # (exec, shared memory, forks), so a few at a time, first come first served,
        # finish sooner than all of them sharing the cores; the rest wait in order.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=settings.DBAAS_WAKE_CONCURRENCY)
        )
        await activator.run()


def raise_open_files_limit() -> None:
    """A socket per sleeping database, and the connections held while they wake:
    thousands of files on a dense host, past the usual soft limit of 1024. As high
    as the hard limit allows (as root, as the kernel's per-process maximum)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if os.geteuid() == 0:
        hard = max(hard, int(Path("/proc/sys/fs/nr_open").read_text()))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        log.warning("open files stay limited to %d: a few hundred databases' sockets", soft)
