"""The Celery app. Work for a tenant runs on its host's queue, `host.<name>`;
control-plane work (fan-out, beat jobs) on the `control` queue.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dbaas.settings")

app = Celery("dbaas")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def host_queue(host_name: str) -> str:
    return f"host.{host_name}"
