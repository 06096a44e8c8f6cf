"""The crash watch (a thread of the activator): this host's running tenants, looked
at closely, for what the reconcile loop would find only at its next tick:

- a server that has exited (crashed, killed, out of memory) is started again;
- a server whose log says the disk is full (it may be up but unable to write, or
  let anyone log in) gets its reserve back, so that it can go on and its owner can
  connect and free space; its state reason says so.

Exits are told, not polled: each running server's process has a pidfd in an epoll
set, readable the moment it exits; its instance's lock (Runtime.is_stopped) then
says whether the instance is down. At 10,000 databases with 1,000 awake, asking
every running tenant twice a second took a fifth of a core (bench/density.py).
What a pidfd can miss (a pid read while a restart rewrote it) a pass over every
running tenant's lock catches every FULL_PASS_INTERVAL seconds (and the reconcile
loop, every tick); the logs are read every LOG_INTERVAL seconds. A pass costs
about 0.2 ms per running tenant here, the rounds between them next to nothing.
"""

import logging
import os
import select
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings

from dbaas.files import LogFollower
from tenants.host import agent, report
from tenants.host.spec import RUNNING, TenantSpec

log = logging.getLogger(__name__)

# How long a round waits for an exit before it looks at new tenants anyway.
ROUND_INTERVAL = 0.5
# A server that exited while its instance's other processes still hold the lock
# (its pid namespace being torn down) is looked at again this soon.
RECHECK_INTERVAL = 0.05
FULL_PASS_INTERVAL = 30.0
LOG_INTERVAL = 5.0
# Up to this many tenants to look at, their specs are read one by one.
FEW = 50


class CrashWatch:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._pidfds: dict[str, int] = {}  # instance id -> pidfd of its server
        self._instance_of: dict[int, str] = {}  # pidfd -> instance id
        self._recheck: set[str] = set()  # exited, instance not yet down: look again soon
        self._logs: dict[str, LogFollower] = {}  # how far each server's log was read
        self._noted: set[str] = set()  # whose full disk was told already
        self._resting: dict[str, float] = {}  # failed a look: left alone until then
        self._full_pass_at = self._logs_at = 0.0

    def close(self) -> None:
        for instance_id in list(self._pidfds):
            self._unwatch(instance_id)
        self._epoll.close()

    def watched(self) -> dict[str, int]:
        """The pid each watched instance's pidfd refers to (-1: it has exited)."""
        pids = {}
        for instance_id, fd in self._pidfds.items():
            fdinfo = Path(f"/proc/self/fdinfo/{fd}").read_text()
            pids[instance_id] = int(fdinfo.split("Pid:", 1)[1].split()[0])
        return pids

    def round(self) -> list[str]:
        """Wait for an exit (at most ROUND_INTERVAL), then act on what needs it.
        Returns what was done, as "<instance id>: <what>"."""
        exited = self._wait(RECHECK_INTERVAL if self._recheck else ROUND_INTERVAL)
        store = agent.store()
        running = store.instance_ids((RUNNING,))
        for instance_id in set(self._pidfds) - running:
            self._unwatch(instance_id)
        for instance_id in set(self._logs) - running:
            del self._logs[instance_id]
            self._noted.discard(instance_id)
        now = time.monotonic()
        logs_due = now - self._logs_at >= LOG_INTERVAL
        if now - self._full_pass_at >= FULL_PASS_INTERVAL:
            self._full_pass_at = now
            look_at = set(running)
        else:
            look_at = (exited | self._recheck | (running - set(self._pidfds))) & running
        soon, self._recheck = exited | self._recheck, set()
        # One whose last look failed rests until the next pass (not retried, nor
        # logged, twice a second).
        self._resting = {i: until for i, until in self._resting.items() if until > now}
        look_at -= self._resting.keys()
        if not look_at and not logs_due:
            return []
        # The specs (what runtime each runs in) of those to look at; of every
        # running one when their logs are due.
        if logs_due or len(look_at) > FEW:
            specs = {t.instance_id: t for t, _ in store.all((RUNNING,))}
        else:
            specs = {iid: spec for iid in look_at if (spec := store.get(iid)) is not None}
        done = []
        if logs_due:
            self._logs_at = now
            for tenant in specs.values():
                done += self._each(tenant.instance_id, self._disk_full, tenant)
        for instance_id in sorted(look_at & set(specs)):
            done += self._each(instance_id, self._exit, specs[instance_id], instance_id in soon)
        return done

    def _each(self, instance_id: str, look: Callable[..., str | None], *args: Any) -> list[str]:
        """One tenant's look: what it did, or nothing if it failed (the others still
        get theirs; this one rests until the next pass)."""
        try:
            what = look(*args)
        except Exception:
            log.exception("crash watch: %s", instance_id)
            self._resting[instance_id] = time.monotonic() + FULL_PASS_INTERVAL
            return []
        return [what] if what else []

    def _wait(self, timeout: float) -> set[str]:
        """The instances whose watched server exited (no longer watched)."""
        exited = {self._instance_of[fd] for fd, _ in self._epoll.poll(timeout)}
        for instance_id in exited:
            self._unwatch(instance_id)
        return exited

    def _exit(self, tenant: TenantSpec, exited: bool) -> str | None:
        """Watch the tenant's server; start it again if its instance is down."""
        iid, route = tenant.instance_id, agent.routes()
        if route.target(iid) is None or route.points_to_activator(iid):
            return None  # not routed to a server that should be up
        runtime = agent.runtime_for(tenant)
        if iid not in self._logs:
            # From where its log ends now, within a round of its start (a server
            # that cannot start on a full disk is told of by the start itself).
            self._logs[iid] = follower = LogFollower(runtime.log_file(iid))
            follower.new_lines()
        # The pidfd before the lock: an exit after the look is told, not missed.
        # One that cannot be had (no pid recorded yet) is looked at every round.
        if iid not in self._pidfds:
            self._watch(iid, runtime.recorded_pid(iid))
        if not runtime.is_stopped(iid):
            if exited and iid not in self._pidfds:
                self._recheck.add(iid)  # its other processes are going
            return None
        self._unwatch(iid)  # its next server has a new pid
        if agent.instance_repair(tenant, actor="crash-watch") == "restarted":
            return f"{iid}: restarted"
        return None

    def _disk_full(self, tenant: TenantSpec) -> str | None:
        """Once per episode (a client that keeps writing keeps logging the same):
        the reserve back and the owner told."""
        iid = tenant.instance_id
        runtime = agent.runtime_for(tenant)
        follower = self._logs.get(iid)
        if follower is None:
            return None  # not looked at yet (it is, in this round)
        if not runtime.reserve_given_back(iid):
            self._noted.discard(iid)  # its reserve is back: the next full disk is news
        full = _new_log_line(follower, agent.DISK_FULL_WORDS)
        if full is None or iid in self._noted:
            return None
        self._noted.add(iid)
        freed = runtime.release_reserve(iid, settings.DBAAS_DISK_RESERVE_MB << 20)
        report.note(tenant.pk, agent.disk_full_note(freed, full[:200]))
        report.event(tenant.pk, "disk_full", "crash-watch", full, 0)
        return f"{iid}: disk full, {freed >> 20} MB freed"

    def _watch(self, instance_id: str, pid: int | None) -> None:
        if pid is None:
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return  # gone already: the lock says whether it was the last
        self._pidfds[instance_id], self._instance_of[fd] = fd, instance_id
        self._epoll.register(fd, select.EPOLLIN)

    def _unwatch(self, instance_id: str) -> None:
        fd = self._pidfds.pop(instance_id, None)
        if fd is not None:
            del self._instance_of[fd]
            os.close(fd)  # closing drops it from the epoll set too


def _new_log_line(follower: LogFollower, needles: tuple[str, ...]) -> str | None:
    """The last line with one of `needles` the log got since the last look (None
    if none; the first look only notes where the log ends)."""
    found = [line for line in follower.new_lines() if any(n in line for n in needles)]
    return found[-1].split(" ", 3)[-1] if found else None
