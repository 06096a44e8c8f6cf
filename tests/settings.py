"""The settings of a test session: the platform's own (dbaas/settings.py), pointed at
a data directory, pooler port, Redis database, host name and control-plane database
of the session's own, so that the tests run beside `make run` (sharing only its
control-plane cluster and Redis server). DBAAS_TEST_SLOT=1..4 gives a second
session a set of its own.

They are set as environment variables, before the platform's settings read them,
so that the processes the tests start (pooler, workers, activator, beat) get the
same; those load the platform's settings module itself.
"""

import os
from pathlib import Path


def session_environment(slot: int, base: Path) -> dict[str, str]:
    """The variables of test session `slot`, `base` being `make run`'s data directory."""
    suffix = "" if slot == 0 else str(slot)
    return {
        "DBAAS_SERVICES_DIR": str(base),  # make run's control-plane cluster and Redis
        "DBAAS_DATA_DIR": str(base / f"test{suffix}"),
        "DBAAS_REDIS_DB": str(15 - slot),
        # The host's PgBouncers take this port and the next DBAAS_POOLER_SHARDS - 1.
        "DBAAS_PGBOUNCER_PORT": str(6540 + 10 * slot),
        "DBAAS_EXPORTS_PORT": str(6634 + slot),
        "DBAAS_HOST_NAME": f"testhost{suffix}",
        "DBAAS_DB_NAME": f"test_dbaas{suffix}",
        "DBAAS_TEST_DB_NAME": f"test_dbaas{suffix}",
        # Quick enough to watch in a test.
        "DBAAS_RECONCILE_INTERVAL": "2",
        # A host whose agent is killed is down within seconds (tests/test_hosts.py);
        # not so soon that a worker busy for a moment looks down.
        "DBAAS_HEARTBEAT_INTERVAL": "1",
        "DBAAS_HOST_DOWN_AFTER": "8",
        # Every request of the session comes from 127.0.0.1.
        "DBAAS_SIGNUPS_PER_IP_HOUR": "100000",
        "DBAAS_LOGIN_FAILURES_PER_IP": "100000",
        # Small enough for a test to reach.
        "DBAAS_POOLER_CONNECTIONS_PER_ADDRESS": "200",
        # Half-open connections dropped soon enough for a test to see it.
        "DBAAS_POOLER_LOGIN_TIMEOUT": "10",
        "DBAAS_POOLER_LOGIN_FAILURES_PER_ADDRESS": "10",
        # Tests fail logins from 127.0.0.1 on purpose; the guard's test uses others.
        "DBAAS_POOLER_LOGIN_GUARD_EXEMPT": "127.0.0.1",
    }


if os.environ.get("DBAAS_TEST_SESSION") != "1":  # once: child processes inherit it
    slot = int(os.environ.get("DBAAS_TEST_SLOT", "0") or 0)
    base = Path(os.environ.get("DBAAS_DATA_DIR") or Path(__file__).resolve().parents[1] / "var")
    os.environ.update(session_environment(slot, base), DBAAS_TEST_SESSION="1")
os.environ["DJANGO_SETTINGS_MODULE"] = "dbaas.settings"  # what the child processes load

from dbaas.settings import *  # noqa: E402,F403
