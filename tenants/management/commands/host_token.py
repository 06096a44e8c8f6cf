"""`manage.py host_token NAME [--rotate]`, on the control plane: the token a host
needs to join (tenants/host/identity.py). Shown again on each run; `--rotate` makes
a new one, and the host's old token stops working at once (its reports are dropped
until it is restarted with the new one)."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_slug

from tenants import host_identity


class Command(BaseCommand):
    help = "Show (or with --rotate, replace) the token a host joins the platform with."

    def add_arguments(self, parser):
        parser.add_argument("name", help="the host's name (its DBAAS_HOST_NAME)")
        parser.add_argument(
            "--rotate", action="store_true", help="make a new token; the old one stops working"
        )

    def handle(self, *args, name: str, rotate: bool, **options):
        if len(name) > 63:
            raise CommandError("a host's name is at most 63 characters")
        try:
            validate_slug(name)
        except ValidationError:
            raise CommandError(
                "a host's name is letters, digits, hyphens and underscores"
            ) from None
        token = host_identity.issue(name, rotate=rotate)
        self.stdout.write(str(token))
        self.stderr.write(
            f"\nOn host {name}, run (with its own address for DBAAS_PUBLIC_HOST and "
            "DBAAS_PGBOUNCER_LISTEN):\n"
            f"  DBAAS_HOST_NAME={name} DBAAS_HOST_TOKEN='{token}' \\\n"
            f"  REDIS_URL={settings.REDIS_URL} \\\n"
            "  DBAAS_PUBLIC_HOST=... DBAAS_PGBOUNCER_LISTEN=... python manage.py run_host\n"
        )
