"""A plan's PostgreSQL settings (Plan.postgres_settings): its servers run with them
(the free plan's are small: tests/conftest.py gives it Plan.FREE_POSTGRES_SETTINGS,
as migration 0019 does), a change applies from the next start, and only the
settings and values a plan may set get into a server's config."""

import pytest
from django.core.exceptions import ValidationError

from tenants.host import agent
from tenants.host.spec import postgres_config
from tenants.models import Plan, Tenant
from tenants.tasks import reconcile_all_hosts
from tests.conftest import connect, wait_until
from tests.helpers import create, put_to_sleep


def _show(db: dict, name: str) -> str:
    with connect(db["connection_string"]) as conn:
        return conn.execute(f"SHOW {name}").fetchone()[0]


def test_servers_run_with_their_plans_settings(live, alice):
    db = create(alice, "plansettings")
    assert _show(db, "shared_buffers") == "1MB"
    assert _show(db, "autovacuum_naptime") == "5min"
    plan = Tenant.objects.get(pk=db["id"]).plan
    plan.postgres_settings = plan.postgres_settings | {"shared_buffers": "2MB"}
    plan.full_clean()
    plan.save()
    # The host gets the plan with the next list the control plane sends it...
    reconcile_all_hosts()
    tenant = Tenant.objects.get(pk=db["id"])
    wait_until(
        lambda: (
            agent.store().get(tenant.instance_id).plan.postgres_settings["shared_buffers"] == "2MB"
        ),
        timeout=30,
    )
    assert _show(db, "shared_buffers") == "1MB"  # ...and the running server keeps its own
    put_to_sleep(alice, db)  # the next start (a wake) takes the plan as it is now
    assert _show(db, "shared_buffers") == "2MB"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"fsync": "off"}, "not a setting a plan may set"),
        ({"shared_buffers": "1MB'\nlisten_addresses = '*"}, "not a value of its kind"),
        ({"shared_buffers": 1}, "not a value of its kind"),
        ({"autovacuum": "maybe"}, "not a value of its kind"),
        (["shared_buffers"], "an object of setting names and values"),
    ],
)
def test_a_plan_may_set_only_known_settings_to_plain_values(values, message):
    plan = Plan(name="odd", postgres_settings=values)
    with pytest.raises(ValidationError, match=message):
        plan.full_clean()


def test_what_reaches_a_servers_config_is_checked_again_on_the_host():
    # A spec from anywhere (an older control plane, a hand-made message): only
    # valid settings, quoted.
    assert postgres_config(
        {"shared_buffers": "1MB", "fsync": "off", "work_mem": "1MB'\nx = 'y"}
    ) == {"shared_buffers": "'1MB'"}
