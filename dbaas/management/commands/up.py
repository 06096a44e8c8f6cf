"""`manage.py up` (what `make run` runs): bring the whole platform up on this machine.

Starts the control-plane PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL point
elsewhere), migrates, builds the image if missing, then runs the web server, the host
agent (Celery worker), Celery beat and PgBouncer under honcho. Ctrl-C stops all of it,
tenant instances included; the next `up` brings the same tenants back.
"""

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from dbaas import localservices
from dbaas.env import BASE_DIR, env_int, env_str


class Command(BaseCommand):
    help = "Run the whole platform in the foreground (Ctrl-C stops it)."

    def handle(self, *args, **options):
        settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
        lock = open(settings.DATA_DIR / "up.lock", "w")  # noqa: SIM115 - held until exit
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CommandError(
                f"the platform is already running from {settings.DATA_DIR} (another `make run`)"
            ) from None
        # Stop at exit only what this command started.
        started = [s for s in localservices.managed_services() if not s.is_running()]
        for service in localservices.managed_services():
            service.start()
        try:
            self._prepare()
            self._banner()
            self._run_processes()
        finally:
            self.stdout.write("up: stopping tenant instances and local services")
            self._stop_instances()
            for service in reversed(started):
                service.stop()
            lock.close()

    def _prepare(self) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        call_command("build_image")
        from tenants import lifecycle
        from tenants.host.tasks import host_reconcile

        host = lifecycle.host_register(
            name=settings.DBAAS_HOST_NAME,
            public_host=settings.DBAAS_PUBLIC_HOST,
            pooler_port=settings.DBAAS_PGBOUNCER_PORT,
        )
        # Rendered now so that the banner can tell whether they keep the pooler's
        # known flaws closed; run_pooler renders them again as it starts.
        from tenants.host.agent import pooler_render

        self.pooler_exposure = pooler_render(host).exposure()
        # The tenants stopped by the last Ctrl-C come back as soon as the host
        # agent is up, not one reconcile interval later.
        host_reconcile.apply_async((host.name,), queue=host.queue, expires=300)

    def _banner(self) -> None:
        url = f"http://{self._web_bind()}:{self._web_port()}/"
        signup_body = '{"email": "you@example.com", "password": "a long passphrase"}'
        pooler = f"{settings.DBAAS_PUBLIC_HOST}:{settings.DBAAS_PGBOUNCER_PORT}"
        lines = [
            "",
            "dbaas is starting.",
            f"  web console:  {url}   (sign up at {url}signup)",
            f"  REST API:     curl -X POST {url}api/v1/accounts -d '{signup_body}'",
            f"  API docs:     {url}api/docs",
            f"  command line: .venv/bin/dbaas --api-url {url.rstrip('/')} signup",
            f"  admin:        {url}admin/   (operator: .venv/bin/python manage.py createsuperuser)",
            f"  databases:    postgresql://USER:PASSWORD@{pooler}/DB?"
            f"{settings.DBAAS_CONNECTION_TLS}",
            f"  trust its CA: mkdir -p ~/.postgresql && curl -fsS {url}api/v1/ca.pem"
            " >> ~/.postgresql/root.crt",
            f"  pooler:       {self.pooler_exposure.message()}",
            "Press Ctrl-C to stop everything.",
            "",
        ]
        self.stdout.write(self.style.SUCCESS("\n".join(lines)))
        self.stdout.flush()  # before honcho's output, also when it goes to a file
        if self.pooler_exposure.exposed:
            self.stderr.write(self.style.ERROR(self.pooler_exposure.message()))

    def _web_bind(self) -> str:
        return env_str("DBAAS_WEB_BIND", "127.0.0.1")

    def _web_port(self) -> int:
        return env_int("DBAAS_WEB_PORT", 8000, minimum=1)

    def _run_processes(self) -> None:
        venv_bin = Path(sys.executable).parent
        env = os.environ | {
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "DBAAS_DATA_DIR": str(settings.DATA_DIR),
            "DBAAS_HOST_NAME": settings.DBAAS_HOST_NAME,
            "DBAAS_WEB_BIND": self._web_bind(),
            "DBAAS_WEB_PORT": str(self._web_port()),
            "PYTHONUNBUFFERED": "1",
        }
        honcho = subprocess.Popen(
            [str(venv_bin / "honcho"), "start", "-f", str(BASE_DIR / "Procfile")],
            cwd=BASE_DIR,
            env=env,
        )

        # Ctrl-C from a terminal reaches honcho too (same process group); a signal
        # sent to this process alone is passed on. Either way honcho stops its
        # children, and we wait for that before stopping what they depend on.
        def forward(signum, frame):
            if honcho.poll() is None:
                honcho.send_signal(signal.SIGTERM)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while True:
                try:
                    honcho.wait()
                    break
                except InterruptedError:
                    continue
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_instances(self) -> None:
        from tenants.host import agent
        from tenants.models import Tenant

        for tenant in Tenant.objects.filter(host__name=settings.DBAAS_HOST_NAME).exclude(
            state=Tenant.State.DELETED
        ):
            try:
                agent.runtime_for(tenant).stop(tenant.instance_id)
            except Exception as exc:
                self.stderr.write(f"up: could not stop {tenant.instance_id}: {exc}")
