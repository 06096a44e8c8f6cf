"""`manage.py build_image [--force]`: build the default instance image if missing."""

from django.conf import settings
from django.core.management.base import BaseCommand

from dbaas.env import service_user
from unikernel_images.image import build_image
from unikernel_images.paths import images_dir


class Command(BaseCommand):
    help = "Build the tenant instance image (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--name", default=settings.DBAAS_IMAGE)
        parser.add_argument("--force", action="store_true", help="rebuild even if up to date")

    def handle(self, *args, name, force, **options):
        import os

        build_user = service_user() if os.geteuid() == 0 else None
        build_image(
            images_dir(),
            name,
            build_user=build_user,
            force=force,
            progress=lambda line: self.stdout.write(f"build_image: {line}"),
        )
