"""`manage.py run_registrar`: this host's registrar of the databases tenants create
(poolers/registrar.py): a socket bound into each tenant's instance, which its server
asks before and after CREATE / DROP / RENAME DATABASE.

A process of its own, not the activator's: each holds a socket per database of the
host, and together they passed the 20,000 open files a process may have on these
machines at 10,000 databases (bench/density.py).
"""

import asyncio

from django.core.management.base import BaseCommand

from poolers.registrar import Registrar
from tenants.host import agent, databases
from tenants.management.commands.run_activator import raise_open_files_limit


def decide(instance_id: str, verb: str, name: str) -> str | None:
    return databases.decide(instance_id, verb, name)


class Command(BaseCommand):
    help = "Run this host's registrar of the databases tenants create."

    def handle(self, *args, **options):
        raise_open_files_limit()
        routes = agent.routes()
        routes.prepare()
        self.stdout.write(f"run_registrar: listening for the tenants in {routes.root}")
        self.stdout.flush()
        asyncio.run(Registrar(routes, decide).run())
