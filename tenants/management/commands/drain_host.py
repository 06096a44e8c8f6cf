"""`manage.py drain_host NAME`: move every database off a host (to retire it, or to
work on it), one after the other, and stop placing new ones there. Sleeping ones
move without being started; the clients of a running one wait a few seconds. The
old connection strings keep working through the host's pooler for
DBAAS_MOVE_FORWARD_DAYS (so keep the host's pooler running that long, or tell the
owners to pick up their new string)."""

from django.core.management.base import BaseCommand, CommandError

from tenants import moves
from tenants.models import Host


class Command(BaseCommand):
    help = "Move every database off a host to the others, and place no new ones on it."

    def add_arguments(self, parser):
        parser.add_argument("name", help="the host's name, as the admin lists it")

    def handle(self, *args, **options):
        host = Host.objects.filter(name=options["name"]).first()
        if host is None:
            names = ", ".join(Host.objects.order_by("name").values_list("name", flat=True))
            raise CommandError(f"no host named {options['name']!r} (hosts: {names or 'none'})")

        def report(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        counts = moves.host_drain(host=host, actor="drain_host", report=report)
        report(
            f"{host.name}: {counts['moved']} moved, {counts['failed']} not moved, "
            f"{counts['left']} left; it takes no new databases (accepting=False)"
        )
        if counts["failed"]:
            raise CommandError(f"{counts['failed']} databases could not be moved; see above")
