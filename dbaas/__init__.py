"""The dbaas Django project: settings, URLs, the Celery app and the local services."""

from dbaas.celery import app as celery_app

__all__ = ["celery_app"]
