"""`manage.py run_pooler`: register this host (a report to the control plane, with
a request for its certificate if it has none), render PgBouncer's files from what
the host holds once it has one, then become PgBouncer (foreground, as the service
account)."""

import os
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from poolers import firewall, tls
from tenants.host import agent

ASK_AGAIN_AFTER = 15


class Command(BaseCommand):
    help = "Run this host's PgBouncer, configured from what the host holds."

    def handle(self, *args, **options):
        bouncer = self._render()
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

    def _render(self):
        """The pooler's files, once this host has its certificate: a host that asks
        the control plane for it (tenants/host/identity.py) waits for the answer,
        and asks again now and then (a request can be lost with its worker)."""
        asked, said = 0.0, ""
        while True:
            if time.monotonic() - asked > ASK_AGAIN_AFTER:
                agent.register()
                asked = time.monotonic()
            try:
                return agent.pooler_render()
            except tls.CertificatePending as exc:
                if said != str(exc):  # once per reason
                    self.stdout.write(f"run_pooler: waiting: {exc}")
                    self.stdout.flush()
                    said = str(exc)
                time.sleep(0.3)

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
