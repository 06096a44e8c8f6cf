"""`manage.py run_pooler`: register this host, render PgBouncer's files from the
control plane, then become PgBouncer (foreground, as the service account)."""

from django.conf import settings
from django.core.management.base import BaseCommand

from tenants import host_agent, services


class Command(BaseCommand):
    help = "Run this host's PgBouncer with configuration rendered from the control plane."

    def handle(self, *args, **options):
        host = services.host_register(
            name=settings.DBAAS_HOST_NAME,
            public_host=settings.DBAAS_PUBLIC_HOST,
            pooler_port=settings.DBAAS_PGBOUNCER_PORT,
        )
        bouncer = host_agent.pooler_render(host)
        exposure = bouncer.exposure()
        (self.stderr if exposure.exposed else self.stdout).write(
            f"run_pooler: {exposure.message()}"
        )
        self.stdout.write(
            f"run_pooler: pgbouncer on {settings.DBAAS_PGBOUNCER_LISTEN}:"
            f"{settings.DBAAS_PGBOUNCER_PORT} for host {host.name}"
        )
        self.stdout.flush()
        bouncer.exec_foreground()
