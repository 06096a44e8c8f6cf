"""`manage.py run_pooler`: register this host (a report to the control plane),
render PgBouncer's files from what the host holds, then become PgBouncer
(foreground, as the service account)."""

import os

from django.conf import settings
from django.core.management.base import BaseCommand

from poolers import firewall
from tenants.host import agent, report


class Command(BaseCommand):
    help = "Run this host's PgBouncer, configured from what the host holds."

    def handle(self, *args, **options):
        report.registered(
            settings.DBAAS_PUBLIC_HOST, settings.DBAAS_PGBOUNCER_PORT, settings.DBAAS_HOST_CAPACITY
        )
        bouncer = agent.pooler_render()
        self._install_firewall()
        exposure = bouncer.exposure()
        (self.stderr if exposure.exposed else self.stdout).write(
            f"run_pooler: {exposure.message()}"
        )
        self.stdout.write(
            f"run_pooler: pgbouncer on {settings.DBAAS_PGBOUNCER_LISTEN}:"
            f"{settings.DBAAS_PGBOUNCER_PORT} for host {settings.DBAAS_HOST_NAME}"
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
