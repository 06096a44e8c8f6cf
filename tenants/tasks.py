"""The control plane's Celery tasks (beat jobs, on the `control` queue): fanning
work out to every host's queue, and the backups schedule and retention."""

import time

from celery import shared_task
from django.conf import settings

from dbaas.celery import host_queue, queue_length
from tenants import backups, moves, services, specs
from tenants.host import backups as host_backups
from tenants.host.tasks import (
    backups_verify,
    host_reconcile,
    instances_sleep_idle,
    partials_discard,
    usage_record,
)
from tenants.host_identity import SignedReport
from tenants.models import Backup, Host


def _on_every_host(*tasks, expires: float, queue=host_queue) -> int:
    """Queue each task (taking the host's name) on every host's own queue (`queue`
    names it from the host's name); a task not picked up within `expires` seconds
    is dropped (the next beat sends another)."""
    hosts = list(Host.objects.values_list("name", flat=True))
    for name in hosts:
        for task in tasks:
            task.apply_async((name,), queue=queue(name), expires=expires)
    return len(hosts)


@shared_task
def record_usage_all_hosts() -> int:
    """Beat: every host measures its capacity and its tenants' sizes."""
    return _on_every_host(usage_record, expires=300)


@shared_task
def reconcile_all_hosts() -> int:
    """Beat: send every host what it should hold, for its agent to reconcile toward,
    and ask it to put idle tenants to sleep; queue again the work whose message was
    lost, and repair moves nobody carries on."""
    hosts = list(Host.objects.all())
    for host in hosts:
        built_at = time.time()
        share = specs.reconcile_slice(host, built_at)
        host_reconcile.apply_async(
            (
                host.name,
                specs.host_tenants(host, share),
                backups.unfinished_on(host),
                built_at,
                list(share),
            ),
            queue=host.queue,
            expires=60,
        )
        instances_sleep_idle.apply_async((host.name,), queue=host.queue, expires=60)
        backups.pending_requeue(host, queue_length(host.bulk_queue))
    moves.moves_repair()
    return len(hosts)


@shared_task
def verify_backups_all_hosts() -> int:
    """Beat (daily): each host verifies a sample of its tenants' newest backups."""
    hosts = list(Host.objects.all())
    for host in hosts:
        sample = backups.backups_to_verify(host, settings.DBAAS_VERIFY_SAMPLE)
        backups_verify.apply_async((host.name, sample), queue=host.bulk_queue, expires=3600)
    return len(hosts)


@shared_task
def schedule_backups() -> dict[str, int]:
    """Beat: daily backups of changed tenants, retention, abandoned backups and what
    their uploads left: in S3 here, in each host's local store on that host."""
    for host in Host.objects.all():
        partials_discard.apply_async(
            (host.name, backups.expired_locations(host)), queue=host.bulk_queue, expires=600
        )
    shared = ["s3"] if Backup.objects.filter(store="s3").exists() else []
    return {
        "requested": backups.backups_schedule(),
        "expired": backups.backups_expire(),
        "abandoned": backups.backups_fail_abandoned(),
        "partials": host_backups.partials_discard(shared),
    }


@shared_task
def hosts_check_heartbeats() -> int:
    """Beat: hosts silent for longer than DBAAS_HOST_DOWN_AFTER are marked down (each
    host sends its own heartbeats: tenants/host/heartbeat.py)."""
    return services.hosts_mark_down()


@shared_task(base=SignedReport)
def heartbeat_received(host_name: str, checks: dict[str, str]) -> None:
    """A host's heartbeat (sent by name from tenants/host/heartbeat.py)."""
    services.host_heartbeat_record(name=host_name, checks=checks)


@shared_task
def host_drain(host_id: int, actor: str, skip: list[int] | None = None) -> str:
    """An operator's drain from the admin (manage.py drain_host does the same): one
    database per task, then the task queues itself for the next, so that no task
    outlives the time limit however many there are."""
    host = Host.objects.get(pk=host_id)
    if skip is None:
        moves.drain_begin(host=host, actor=actor)
    tried = set(skip or ())
    outcome = moves.drain_next(
        host=host, actor=actor, skip=tried, wait=settings.CELERY_TASK_SOFT_TIME_LIMIT - 20
    )
    if outcome is None:
        return "drained"
    tenant, _moved, line = outcome
    host_drain.apply_async((host_id, actor, sorted(tried | {tenant.pk})))
    return line
