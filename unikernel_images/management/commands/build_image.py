"""`manage.py build_image [--name postgres-17] [--force]`: build the instance image of
every PostgreSQL major this host has (or the one named), unless up to date; and the
microvm runtime's boot image, when the guest kernel is there
(scripts/guest-kernel.sh), with the accelerator this host can use decided once."""

import os

from django.core.management.base import BaseCommand, CommandError

from dbaas.env import controlplane_user
from unikernel_images import accel, guest
from unikernel_images.image import ImageError, build_image, image_name, installed_majors
from unikernel_images.paths import images_dir
from unikernel_images.runtimes.microvm import accelerator_setting


class Command(BaseCommand):
    help = "Build the tenant instance images (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--name", help="one image, e.g. postgres-17 (default: all)")
        parser.add_argument("--force", action="store_true", help="rebuild even if up to date")

    def handle(self, *args, name, force, **options):
        build_user = controlplane_user() if os.geteuid() == 0 else None
        names = [name] if name else [image_name(major) for major in installed_majors()]
        if not names:
            raise CommandError("no PostgreSQL server is installed on this host")
        for each in names:
            try:
                build_image(
                    images_dir(),
                    each,
                    build_user=build_user,
                    force=force,
                    progress=lambda line: self.stdout.write(f"build_image: {line}"),
                )
            except ImageError as exc:
                raise CommandError(str(exc)) from exc
        self._build_guest()

    def _build_guest(self) -> None:
        try:
            guest.kernel_release()
        except ImageError as exc:
            self.stdout.write(f"build_image: no microvm boot image ({exc})")
            return
        try:
            built = guest.build_guest(
                images_dir(), progress=lambda line: self.stdout.write(f"build_image: {line}")
            )
            kind = accel.accelerator(accelerator_setting(), built, images_dir())
        except (ImageError, accel.AccelError, OSError) as exc:
            # The sandbox runtime does not need it: the platform runs, and a
            # microvm database fails with this reason until it is fixed.
            self.stderr.write(f"build_image: no microvm boot image: {exc}")
            return
        self.stdout.write(f"build_image: microvm guests run under {kind}")
