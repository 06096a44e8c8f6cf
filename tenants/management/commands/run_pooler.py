"""`manage.py run_pooler`: register this host (a report to the control plane, with
a request for its certificate if it has none), render the files of the host's
PgBouncers (DBAAS_POOLER_SHARDS of them, each a share of the tenants on a port of
its own) from what the host holds once it has one, then become the service account,
run them and stay with them: one that ends is started again; when this process ends
(a signal, or killed) they end too."""

import os
import signal
import subprocess
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from poolers import firewall, tls
from poolers.pgbouncer import PgBouncer
from tenants.host import agent

ASK_AGAIN_AFTER = 15
# A PgBouncer that ends is started again after this long (it may end again at once:
# a port taken, a file it cannot read; not faster than this).
RESTART_AFTER = 1.0


class Command(BaseCommand):
    help = "Run this host's PgBouncers, configured from what the host holds."

    def handle(self, *args, **options):
        bouncers = self._render()
        self._install_firewall()
        exposure = bouncers[0].exposure()
        (self.stderr if exposure.exposed else self.stdout).write(
            f"run_pooler: {exposure.message()}"
        )
        first, last = bouncers[0].listen_port, bouncers[-1].listen_port
        self.stdout.write(
            f"run_pooler: {len(bouncers)} pgbouncers on {settings.DBAAS_PGBOUNCER_LISTEN}:"
            f"{first}{f'-{last}' if last != first else ''} for host {settings.DBAAS_HOST_NAME}"
        )
        self.stdout.flush()
        bouncers[0].become_service_user()  # nothing below needs root
        self._supervise(bouncers)

    def _supervise(self, bouncers: list[PgBouncer]) -> None:
        stopping = []
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda signum, frame: stopping.append(signum))
        children = {bouncer.shard: bouncer.spawn() for bouncer in bouncers}
        try:
            while not stopping:
                time.sleep(0.2)
                ended = [b for b in bouncers if children[b.shard].poll() is not None]
                if not ended:
                    continue
                time.sleep(RESTART_AFTER)  # a signal to stop them all may be on its way
                for bouncer in ended if not stopping else []:
                    self.stderr.write(
                        f"run_pooler: pgbouncer on port {bouncer.listen_port} ended "
                        f"({children[bouncer.shard].returncode}); starting it again"
                    )
                    self.stderr.flush()
                    children[bouncer.shard] = bouncer.spawn()
        finally:
            for child in children.values():
                if child.poll() is None:
                    # Not SIGTERM: since 1.23 that waits for every client to leave,
                    # the host's own kept admin sessions too. SIGINT waits only for
                    # server connections in use to be released.
                    child.send_signal(signal.SIGINT)
            for child in children.values():
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()

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
            firewall.install(port, limit, ports=settings.DBAAS_POOLER_SHARDS)
        except firewall.FirewallError as exc:
            self.stderr.write(
                f"run_pooler: WARNING: no limit of connections per address, no login bans: {exc}"
            )
            return
        if limit:
            self.stdout.write(f"run_pooler: at most {limit} connections per client address")
