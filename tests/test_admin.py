"""The operators' console (Django admin): what it lists and filters, who gets in,
and the actions on tenants (restart, suspend, unsuspend) against the real worker.
The same console in a real browser is in test_browser.py."""

import psycopg
import pytest
from django.contrib.auth import get_user_model

from tenants.models import Tenant
from tests.conftest import connect, wait_until
from tests.helpers import create

pytestmark = pytest.mark.timeout(120)


def test_the_admin_console_lists_and_filters_tenants(live, client, alice):

    db = create(alice, "adminview")
    staff = get_user_model().objects.create_superuser("ops", "ops@example.com", "ops password 1")
    client.force_login(staff)
    for path in (
        "/admin/tenants/host/",
        "/admin/tenants/plan/",
        "/admin/tenants/event/",
        "/admin/tenants/tenant/?state__exact=running",
        "/admin/tenants/tenant/?q=alice",
        f"/admin/tenants/tenant/{db['id']}/change/",
        "/admin/tenants/plan/1/change/",
    ):
        response = client.get(path)
        assert response.status_code in (200, 302), path
    listing = client.get("/admin/tenants/tenant/?q=alice").content
    assert b"adminview" in listing
    page = client.get(f"/admin/tenants/tenant/{db['id']}/change/").content
    assert b"provision" in page  # the event timeline
    assert db["password"].encode() not in page


def test_non_staff_users_get_no_admin(live, client, alice):
    user = get_user_model().objects.get(email="alice@example.com")
    client.force_login(user)
    response = client.get("/admin/tenants/tenant/")
    assert response.status_code == 302
    assert "/admin/login" in response["Location"]


def test_admin_dashboard_and_actions_restart_suspend_unsuspend(live, client, alice):
    from tenants.host.agent import runtime_for
    from tenants.models import Event
    from tests.helpers import measure
    from unikernel_images.runtimes.base import InstanceState

    db = create(alice, "opsdb")
    with connect(db["connection_string"]) as conn:
        conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('safe')")
        conn.commit()
    tenant = Tenant.objects.get(pk=db["id"])
    measure(tenant.host)
    staff = get_user_model().objects.create_superuser("ops", "ops@example.com", "ops password 1")
    client.force_login(staff)
    index = client.get("/admin/")
    assert b"Host capacity" in index.content
    assert tenant.host.name.encode() in index.content
    assert index.context["hosts"][0].running == 1

    def act(action: str) -> None:
        response = client.post(
            "/admin/tenants/tenant/", {"action": action, "_selected_action": [tenant.pk]}
        )
        assert response.status_code == 302

    def event(action: str) -> Event | None:
        return Event.objects.filter(tenant=tenant, action=action).first()

    act("restart_tenants")
    restarted = wait_until(lambda: event("restart"))
    assert Event.objects.get(tenant=tenant, action="restart_requested").actor == "admin:ops"
    assert restarted.actor == "admin:ops"
    with connect(db["connection_string"]) as conn:
        assert conn.execute("SELECT v FROM kept").fetchone() == ("safe",)

    connected = connect(db["connection_string"], autocommit=True)
    connected.execute("SELECT 1")
    act("suspend_tenants")
    wait_until(lambda: Tenant.objects.get(pk=tenant.pk).state == "suspended")
    wait_until(lambda: event("stopped"))
    assert runtime_for(tenant).status(tenant.instance_id).state is InstanceState.STOPPED
    # A client connected when it was suspended is cut off too.
    with pytest.raises(psycopg.OperationalError):
        connected.execute("SELECT 1")
    connected.close()
    with pytest.raises(psycopg.OperationalError):
        connect(db["connection_string"]).close()
    assert alice.call("GET", f"/databases/{db['id']}").json()["state"] == "suspended"
    assert alice.call("POST", f"/databases/{db['id']}/wake").status_code == 409

    act("unsuspend_tenants")
    wait_until(lambda: Tenant.objects.get(pk=tenant.pk).state == "running")
    with connect(db["connection_string"]) as conn:
        assert conn.execute("SELECT v FROM kept").fetchone() == ("safe",)
    page = client.get(f"/admin/tenants/tenant/{tenant.pk}/change/").content
    for action in (b"restart", b"suspend", b"unsuspend"):
        assert action in page
