"""Password guessing at the pooler, slowed down: failed logins are counted per client
address from PgBouncer's log, and an address with too many in a while is refused
by the host firewall for a while (poolers/firewall.py), fail2ban-style.

PgBouncer has no such limit. Per address, not per account: tenants' passwords are
made by the platform (192 random bits), so guessing one is hopeless anyway,
and a lock per account would let anyone lock a tenant out of its own database.
What the ban stops is one address trying names and passwords at full speed.
"""

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from dbaas import files

log = logging.getLogger(__name__)

# PgBouncer's line for a client connection: "C-0x...: db/user@address:port message".
_CLIENT_LINE = re.compile(
    r" C-0x[0-9a-f]+: \S+@\[?(?P<address>[0-9a-fA-F.:]+?)\]?:(?P<port>\d+) "
    r"(?:pooler error: )?(?P<what>.+)$"
)
# What a failed login leaves there: a wrong password (SCRAM: two lines, counted
# once per connection), or a user or database its hba rules refuse.
_FAILURES = (
    "password authentication failed",
    "SASL authentication failed",
    "no authentication method is found",
)
# The log is cut back to nothing once it has been read past this size.
MAX_LOG_BYTES = 64 << 20


def failed_login(line: str) -> tuple[str, int] | None:
    """(client address, client port) if the log line tells of a failed login."""
    match = _CLIENT_LINE.search(line)
    if match is None or not match["what"].startswith(_FAILURES):
        return None
    return match["address"], int(match["port"])


class FailureCounter:
    """Failed logins per address over a sliding window."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._failures: dict[str, deque[float]] = {}
        self._connections: dict[tuple[str, int], float] = {}  # one count per connection

    def failed(self, address: str, port: int) -> bool:
        """Count one failure; True when the address has just reached the limit."""
        now = self.clock()
        self._forget_before(now - self.window)
        if (address, port) in self._connections:
            return False
        self._connections[(address, port)] = now
        times = self._failures.setdefault(address, deque())
        times.append(now)
        if len(times) >= self.limit:
            del self._failures[address]  # counted afresh once the ban ends
            return True
        return False

    def _forget_before(self, oldest: float) -> None:
        for address in list(self._failures):
            times = self._failures[address]
            while times and times[0] < oldest:
                times.popleft()
            if not times:
                del self._failures[address]
        for key in [k for k, at in self._connections.items() if at < oldest]:
            del self._connections[key]


class LogFollower(files.LogFollower):
    """PgBouncer's log, followed, and cut back once read past MAX_LOG_BYTES
    (PgBouncer appends: it goes on writing at the new end)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, cut_at=MAX_LOG_BYTES)


def guard(
    log_files: list[Path],
    *,
    limit: int,
    window: float,
    ban: Callable[[str], None],
    exempt: frozenset[str] = frozenset(),
    stop: threading.Event,
    interval: float = 0.5,
) -> None:
    """Follow the logs of a host's PgBouncers until `stop` is set; call
    `ban(address)` for every address that reaches `limit` failed logins within
    `window` seconds, counted over all of them (the ban covers all of them too)."""
    followers, counter = [LogFollower(path) for path in log_files], FailureCounter(limit, window)
    while not stop.wait(interval):
        lines = []
        for follower in followers:
            try:
                lines += follower.new_lines()
            except OSError as exc:
                log.warning("login guard: cannot read %s: %s", follower.path, exc)
        for line in lines:
            failure = failed_login(line)
            if failure is None or failure[0] in exempt:
                continue
            if counter.failed(*failure):
                try:
                    ban(failure[0])
                    log.warning("login guard: %s banned after %d failed logins", failure[0], limit)
                except Exception:
                    log.exception("login guard: could not ban %s", failure[0])
