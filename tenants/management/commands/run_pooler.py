"""`manage.py run_pooler`: register this host, render PgBouncer's files from the
control plane, then become PgBouncer (foreground, as the service account)."""

import os

from django.conf import settings
from django.core.management.base import BaseCommand

from poolers import firewall
from tenants import lifecycle
from tenants.host import agent


class Command(BaseCommand):
    help = "Run this host's PgBouncer with configuration rendered from the control plane."

    def handle(self, *args, **options):
        host = lifecycle.host_register(
            name=settings.DBAAS_HOST_NAME,
            public_host=settings.DBAAS_PUBLIC_HOST,
            pooler_port=settings.DBAAS_PGBOUNCER_PORT,
            max_tenants=settings.DBAAS_HOST_CAPACITY,
        )
        bouncer = agent.pooler_render(host)
        self._install_firewall()
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

    def _install_firewall(self) -> None:
        limit, port = settings.DBAAS_POOLER_CONNECTIONS_PER_ADDRESS, settings.DBAAS_PGBOUNCER_PORT
        if os.geteuid() != 0:
            self.stderr.write(
                "run_pooler: not root: no limit of connections per address, no login bans"
            )
            return
        try:
            firewall.install(port, limit)
        except firewall.FirewallError as exc:
            self.stderr.write(
                f"run_pooler: WARNING: no limit of connections per address, no login bans: {exc}"
            )
            return
        if limit:
            self.stdout.write(f"run_pooler: at most {limit} connections per client address")
