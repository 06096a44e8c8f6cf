"""This host's heartbeat: every DBAAS_HEARTBEAT_INTERVAL seconds, from a thread of
the activator's process (never from the agent's worker, whose slots may all be busy
with long work: busy is not gone), the health of the host's parts goes to the
control plane by task name. The agent counts as alive while its worker's main
process runs (it holds dbaas.celery.AGENT_LOCK); a host whose agent is not running
says so, and the control plane does not count that as a sign of life."""

import logging
import threading

from django.conf import settings

from dbaas import locks
from dbaas.celery import AGENT_LOCK
from tenants.host import agent, report

log = logging.getLogger(__name__)
HEARTBEAT_RECEIVED = "tenants.tasks.heartbeat_received"


def checks() -> dict[str, str]:
    """How this host's parts are: `ok`, or `error: ...` for each."""
    found = agent.host_health()
    found["agent"] = (
        "ok" if locks.is_held(AGENT_LOCK) else "error: the host agent's worker is not running"
    )
    return found


def send() -> dict[str, str]:
    found = checks()
    report.send_signed(
        HEARTBEAT_RECEIVED,
        found,
        # One the control plane has not read before the next is sent says nothing new.
        expires=settings.DBAAS_HEARTBEAT_INTERVAL * 3,
    )
    return found


def keep_beating(stop: threading.Event) -> None:
    """Send a heartbeat every DBAAS_HEARTBEAT_INTERVAL until `stop` is set."""
    failing = False
    while not stop.wait(settings.DBAAS_HEARTBEAT_INTERVAL):
        try:
            send()
        except Exception:
            if not failing:  # once per outage
                log.exception("heartbeat: cannot reach the control plane's queue; retrying")
            failing = True
        else:
            if failing:
                log.info("heartbeat: sent again")
            failing = False
