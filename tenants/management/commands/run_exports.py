"""`manage.py run_exports`: serve this host's logical exports to the control plane
(tenants/host/exports.py), in the foreground."""

import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from tenants.host import agent, exports, identity


class Command(BaseCommand):
    help = "Serve this host's logical exports to the control plane (signed URLs, TLS)."

    def handle(self, *args, **options):
        bouncer = agent.pooler()
        # The pooler's certificate for this host's public address: run_pooler makes
        # it as it starts, beside this process.
        deadline = time.monotonic() + 120
        while not (bouncer.tls_cert.exists() and bouncer.tls_key.exists()):
            if time.monotonic() > deadline:
                raise CommandError(f"no certificate at {bouncer.tls_cert}: is run_pooler up?")
            time.sleep(0.2)
        server = exports.make_server(
            settings.DBAAS_PGBOUNCER_LISTEN,
            settings.DBAAS_EXPORTS_PORT,
            settings.DATA_DIR / "backups",
            identity.exports_key(identity.own_token().key),
            exports.tls_context(bouncer.tls_cert, bouncer.tls_key),
        )
        self.stdout.write(
            f"run_exports: serving on {settings.DBAAS_PGBOUNCER_LISTEN}:"
            f"{settings.DBAAS_EXPORTS_PORT}"
        )
        self.stdout.flush()
        server.serve_forever()
