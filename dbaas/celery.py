"""The Celery app. Work for a tenant runs on its host: short work (provision, sleep,
wake, passwords, reconcile) on `host.<name>`, long work (backups, restores, their
verification) on `host.<name>.bulk`, served by a worker of its own so that a burst
of backups never delays anyone's password change. Control-plane work (fan-out,
beat jobs) runs on the `control` queue.
"""

import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dbaas.settings")

app = Celery("dbaas")
app.config_from_object("django.conf:settings", namespace="CELERY")
# tenants/tasks.py (the control plane's) and tenants/host/tasks.py (each host's).
app.autodiscover_tasks()
app.autodiscover_tasks(["tenants.host"])
# What hosts report (tenants/reports.py), on the control queue.
app.autodiscover_tasks(["tenants"], related_name="reports")


def host_queue(host_name: str) -> str:
    return f"host.{host_name}"


def host_bulk_queue(host_name: str) -> str:
    return f"host.{host_name}.bulk"


def queue_length(queue: str) -> int | None:
    """Messages waiting in a queue (None if the broker cannot say). The broker is
    Redis, where Celery keeps a queue as a list of that name."""
    import logging

    import redis
    from django.conf import settings

    try:
        return int(redis.Redis.from_url(settings.REDIS_PY_URL, socket_timeout=5).llen(queue))  # type: ignore[arg-type]
    except redis.RedisError as exc:
        logging.getLogger(__name__).warning("cannot read the length of queue %s: %s", queue, exc)
        return None


# Held by the running worker of this host's queue (its main process, which answers
# even while every pool slot is busy): the host's heartbeat says the agent is alive
# only while it is held (tenants/host/heartbeat.py).
AGENT_LOCK = "agent-worker"


@worker_ready.connect
def _hold_agent_lock(sender, **kwargs) -> None:
    from django.conf import settings

    from dbaas import locks

    queues = set(sender.app.amqp.queues.consume_from or ())
    if host_queue(settings.DBAAS_HOST_NAME) in queues:
        locks.hold_for_life(AGENT_LOCK)
