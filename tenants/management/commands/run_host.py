"""`manage.py run_host`: run this machine as one host of the platform: its agent
(the Celery workers of its queues), its PgBouncer and its activator, under honcho
(Procfile.host), in the foreground. Point it at the control plane's Redis
(REDIS_URL) and give it its host token (DBAAS_HOST_TOKEN, from `manage.py
host_token NAME` on the control plane); it never connects to the control plane's
database. It registers itself with its address
(DBAAS_PUBLIC_HOST, where DBAAS_PGBOUNCER_LISTEN is reached) and capacity
(DBAAS_HOST_CAPACITY). Ctrl-C stops its processes and its tenants' instances; the
next start brings them back.
"""

import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from dbaas import locks
from dbaas.celery import host_queue
from dbaas.env import BASE_DIR
from dbaas.foreground import wait_all
from tenants.host import agent, identity
from tenants.host.tasks import host_reconcile
from unikernel_images.paths import instances_dir
from unikernel_images.runtimes import runtime_of


class Command(BaseCommand):
    help = "Run this machine as a host of the platform (Ctrl-C stops it)."

    def handle(self, *args, **options):
        try:
            identity.own_token()
        except identity.TokenError as exc:
            raise CommandError(str(exc)) from None
        with locks.held("host", timeout=0) as mine:
            if not mine:
                raise CommandError(f"a host already runs from {settings.DATA_DIR}")
            self._run()

    def _run(self) -> None:
        try:
            call_command("build_image")
            name = settings.DBAAS_HOST_NAME
            agent.register()
            # The tenants stopped by the last Ctrl-C come back as soon as the agent
            # is up, not one reconcile interval later (from what this host holds).
            host_reconcile.apply_async((name,), queue=host_queue(name), expires=300)
            self.stdout.write(
                f"run_host: host {name}, databases at "
                f"{settings.DBAAS_PUBLIC_HOST}:{settings.DBAAS_PGBOUNCER_PORT}"
            )
            self.stdout.flush()
            venv_bin = Path(sys.executable).parent
            env = os.environ | {
                "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "DBAAS_DATA_DIR": str(settings.DATA_DIR),
                "DBAAS_HOST_NAME": settings.DBAAS_HOST_NAME,
                "PYTHONUNBUFFERED": "1",
                # The host's processes never reach the control plane's database.
                "DBAAS_HOST_ONLY": "1",
            }
            env.pop("DATABASE_URL", None)
            procfile = BASE_DIR / "Procfile.host"
            honcho = subprocess.Popen(
                [str(venv_bin / "honcho"), "start", "-f", str(procfile)], cwd=BASE_DIR, env=env
            )
            wait_all([honcho])
        finally:
            self._stop_instances()

    def _stop_instances(self) -> None:
        """Every instance of this host, from its own files (no control plane needed)."""
        root = instances_dir()
        if not root.exists():
            return
        for entry in sorted(root.iterdir()):
            if entry.name.startswith("."):
                continue
            try:
                runtime_of(root, entry.name).stop(entry.name)
            except Exception as exc:
                self.stderr.write(f"run_host: could not stop {entry.name}: {exc}")
