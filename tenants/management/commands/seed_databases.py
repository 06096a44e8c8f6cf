"""`manage.py seed_databases COUNT [--asleep]`: grow the platform by COUNT databases,
for density benchmarks and tests (bench/density.py, tests/test_density.py): made
as the API makes them (tenant_create: placement, provisioning on the host, the
pooler's entries), for one account of a plan of its own (`seed`: the free plan's
limits and settings, any number of databases). With --asleep each is put to sleep
once it runs, as most databases of a free tier are. Prints how long it took."""

import time

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from tenants import services
from tenants.models import Account, Plan, Tenant

SEED_EMAIL = "seed@seed.invalid"
State = Tenant.State


class Command(BaseCommand):
    help = "Make COUNT more databases (for density benchmarks and tests)."

    def add_arguments(self, parser):
        parser.add_argument("count", type=int)
        parser.add_argument("--asleep", action="store_true", help="put each to sleep")
        parser.add_argument("--batch", type=int, default=50, help="at most this many at once")
        parser.add_argument("--timeout", type=float, default=600)

    def handle(self, *args, count: int, asleep: bool, batch: int, timeout: float, **options):
        if count < 1:
            raise CommandError("COUNT is at least 1")
        account = self._account()
        started = time.monotonic()
        deadline = started + timeout
        made = 0
        while made < count:
            step = min(batch, count - made)
            first = Tenant.objects.filter(account=account).count()
            tenants = [
                services.tenant_create(account=account, name=f"seed{first + n}", actor="seed")[0]
                for n in range(step)
            ]
            settled = self._wait(tenants, lambda state: state != State.PROVISIONING, deadline)
            failed = [t for t in settled if t.state != State.RUNNING]
            if failed:
                raise CommandError(
                    f"{len(failed)} of the seeded databases did not start: "
                    f"{failed[0].name}: {failed[0].state} {failed[0].state_reason}"
                )
            if asleep:
                for tenant in settled:
                    services.tenant_sleep(tenant=tenant, actor="seed")
                self._wait(settled, lambda state: state == State.SLEEPING, deadline)
            made += step
            elapsed = time.monotonic() - started
            self.stdout.write(f"seed_databases: {made}/{count} ({elapsed:.0f} s)")
            self.stdout.flush()
        self.stdout.write(
            f"seed_databases: {count} databases made{' and asleep' if asleep else ''} "
            f"in {time.monotonic() - started:.1f} s"
        )

    def _account(self) -> Account:
        free = Plan.objects.filter(name="free").first()
        if free is None:
            raise CommandError("no free plan to copy the seed plan from")
        with transaction.atomic():
            plan = Plan.objects.filter(name="seed").first()
            if plan is None:
                plan = free
                plan.pk, plan.id, plan.name, plan.is_default = None, None, "seed", False
                plan.max_databases = 1_000_000
                plan.save()
            account = Account.objects.filter(user__username=SEED_EMAIL).first()
        if account is None:
            account, _token = services.account_create(
                email=SEED_EMAIL, password=f"seed-{time.time_ns()}-not-for-login"
            )
        Account.objects.filter(pk=account.pk).update(plan=plan)
        account.refresh_from_db()
        return account

    def _wait(self, tenants: list[Tenant], until, deadline: float) -> list[Tenant]:
        """The tenants once `until(state)` holds for each: only their states are
        read meanwhile (this loop shares the machine with the platform it grows)."""
        pks = [t.pk for t in tenants]
        while True:
            states = list(Tenant.objects.filter(pk__in=pks).values_list("name", "state"))
            waiting = [(name, state) for name, state in states if not until(state)]
            if not waiting:
                return list(Tenant.objects.filter(pk__in=pks))
            if time.monotonic() > deadline:
                raise CommandError(
                    f"{len(waiting)} seeded databases not settled in time "
                    f"(first: {waiting[0][0]}, {waiting[0][1]})"
                )
            time.sleep(0.5)
