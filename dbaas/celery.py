"""The Celery app. Work for a tenant runs on its host: short work (provision, sleep,
wake, passwords, reconcile) on `host.<name>`, long work (backups, restores, their
verification) on `host.<name>.bulk`, served by a worker of its own so that a burst
of backups never delays anyone's password change. Control-plane work (fan-out,
beat jobs) runs on the `control` queue.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dbaas.settings")

app = Celery("dbaas")
app.config_from_object("django.conf:settings", namespace="CELERY")
# tenants/tasks.py (the control plane's) and tenants/host/tasks.py (each host's).
app.autodiscover_tasks()
app.autodiscover_tasks(["tenants.host"])


def host_queue(host_name: str) -> str:
    return f"host.{host_name}"


def host_bulk_queue(host_name: str) -> str:
    return f"host.{host_name}.bulk"
