"""`manage.py up` (what `make run` runs): bring the whole platform up on this machine.

Starts the control-plane PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL point
elsewhere), migrates, then runs the control plane (web server, its Celery worker,
beat: Procfile) under honcho, and the hosts: this machine as one host (`run_host`:
Procfile.host), or with DBAAS_HOSTS=N > 1, N hosts each in a network namespace of
its own (dbaas/netns.py, root only), removed again on exit. Ctrl-C stops all of it,
tenant instances included; the next `up` brings the same tenants back.
"""

import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from dbaas import localservices, locks, netns
from dbaas.env import BASE_DIR, env_int, env_str
from dbaas.foreground import wait_all


class Command(BaseCommand):
    help = "Run the whole platform in the foreground (Ctrl-C stops it)."

    def handle(self, *args, **options):
        with locks.held("up", timeout=0) as mine:
            if not mine:
                raise CommandError(
                    f"the platform is already running from {settings.DATA_DIR} (another `make run`)"
                )
            self._up()

    def _up(self) -> None:
        # Stop at exit only what this command started.
        started = [s for s in localservices.managed_services() if not s.is_running()]
        for service in localservices.managed_services():
            service.start()
        try:
            self._prepare()
            hosts = self._hosts()
            self._banner(hosts)
            self._run_processes(hosts)
        finally:
            self.stdout.write("up: stopping tenant instances and local services")
            if settings.DBAAS_HOSTS > 1:
                netns.fleet_down(settings.DBAAS_NETNS_SLOT)
            for service in reversed(started):
                service.stop()

    def _prepare(self) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        self.pooler_exposure = None
        if settings.DBAAS_HOSTS == 1:
            # This machine is the host: its pooler's files rendered now so that the
            # banner can tell whether they keep the pooler's known flaws closed.
            from tenants import host_identity, lifecycle
            from tenants.host.agent import pooler_render

            host_identity.install_local(settings.DBAAS_HOST_NAME, settings.DATA_DIR)
            lifecycle.host_register(
                name=settings.DBAAS_HOST_NAME,
                public_host=settings.DBAAS_PUBLIC_HOST,
                pooler_port=settings.DBAAS_PGBOUNCER_PORT,
                pooler_shards=settings.DBAAS_POOLER_SHARDS,
            )
            self.pooler_exposure = pooler_render()[0].exposure()

    def _hosts(self) -> list[tuple[list[str], dict[str, str]]]:
        """How to start each host: its command prefix and its environment."""
        if settings.DBAAS_HOSTS == 1:
            return [([], {})]
        if os.geteuid() != 0:
            raise CommandError("DBAAS_HOSTS > 1 makes network namespaces: run it as root")
        names = [f"{settings.DBAAS_HOST_NAME}-{n}" for n in range(1, settings.DBAAS_HOSTS + 1)]
        hosts = []
        from tenants import host_identity

        for local in netns.fleet_up(names, settings.DBAAS_NETNS_SLOT):
            data = settings.DATA_DIR / "hosts" / local.name
            host_identity.install_local(local.name, data)
            env = local.environment(data)
            hosts.append((local.enter(), env))
        return hosts

    def _banner(self, hosts: list[tuple[list[str], dict[str, str]]]) -> None:
        url = f"http://{self._web_bind()}:{self._web_port()}/"
        signup_body = '{"email": "you@example.com", "password": "a long passphrase"}'
        addresses = [env.get("DBAAS_PUBLIC_HOST", settings.DBAAS_PUBLIC_HOST) for _, env in hosts]
        # Each database is on one of the host's PgBouncers: its own port (PORT below).
        first, shards = settings.DBAAS_PGBOUNCER_PORT, settings.DBAAS_POOLER_SHARDS
        ports = f"{first}" if shards == 1 else f"{first}-{first + shards - 1}"
        pooler = f"{addresses[0] if len(hosts) == 1 else 'HOST'}:PORT"
        lines = [
            "",
            "dbaas is starting.",
            f"  web console:  {url}   (sign up at {url}signup)",
            f"  REST API:     curl -X POST {url}api/v1/accounts -d '{signup_body}'",
            f"  API docs:     {url}api/docs",
            f"  command line: .venv/bin/dbaas --api-url {url.rstrip('/')} signup",
            f"  admin:        {url}admin/   (operator: .venv/bin/python manage.py createsuperuser)",
            f"  databases:    postgresql://USER:PASSWORD@{pooler}/DB?"
            f"{settings.DBAAS_CONNECTION_TLS}   (PORT: one of {ports})",
            f"  trust its CA: mkdir -p ~/.postgresql && curl -fsS {url}api/v1/ca.pem"
            " >> ~/.postgresql/root.crt",
            *(
                [f"  pooler:       {self.pooler_exposure.message()}"]
                if self.pooler_exposure
                else [
                    f"  hosts:        {len(hosts)}, at {', '.join(addresses)} (one per namespace)"
                ]
            ),
            "Press Ctrl-C to stop everything.",
            "",
        ]
        self.stdout.write(self.style.SUCCESS("\n".join(lines)))
        self.stdout.flush()  # before honcho's output, also when it goes to a file
        if self.pooler_exposure and self.pooler_exposure.exposed:
            self.stderr.write(self.style.ERROR(self.pooler_exposure.message()))

    def _web_bind(self) -> str:
        return env_str("DBAAS_WEB_BIND", "127.0.0.1")

    def _web_port(self) -> int:
        return env_int("DBAAS_WEB_PORT", 8000, minimum=1)

    def _run_processes(self, hosts: list[tuple[list[str], dict[str, str]]]) -> None:
        venv_bin = Path(sys.executable).parent
        env = os.environ | {
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "DBAAS_DATA_DIR": str(settings.DATA_DIR),
            "DBAAS_HOST_NAME": settings.DBAAS_HOST_NAME,
            "DBAAS_WEB_BIND": self._web_bind(),
            "DBAAS_WEB_PORT": str(self._web_port()),
            "PYTHONUNBUFFERED": "1",
        }
        control = subprocess.Popen(
            [str(venv_bin / "honcho"), "start", "-f", str(BASE_DIR / "Procfile")],
            cwd=BASE_DIR,
            env=env,
        )
        children = [control]
        for prefix, host_env in hosts:
            command = [*prefix, sys.executable, "manage.py", "run_host"]
            children.append(subprocess.Popen(command, cwd=BASE_DIR, env=env | host_env))
        wait_all(children)
