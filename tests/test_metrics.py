"""GET /metrics (Prometheus text): it names every tenant's database, so it is for
operators only: a staff session, or the bearer token DBAAS_METRICS_TOKEN."""

import re

import pytest
from django.contrib.auth import get_user_model

from tests.helpers import create, put_to_sleep

pytestmark = pytest.mark.timeout(120)


def test_metrics_count_wakes_and_are_for_operators_only(live, alice, settings):
    database = create(alice, "counted")
    put_to_sleep(alice, database)
    assert alice.call("POST", f"/databases/{database['id']}/wake").status_code == 200
    client = alice.client
    assert client.get("/metrics").status_code == 401  # a developer's session is not enough
    staff = get_user_model().objects.create_user("ops", "ops@example.com", "x", is_staff=True)
    client.force_login(staff)
    metrics = client.get("/metrics").content.decode()
    wakes = rf'^dbaas_tenant_wakes_total{{tenant="{database["database"]}",host="[^"]+"}} 1$'
    assert re.search(wakes, metrics, re.M), metrics
    client.logout()
    settings.DBAAS_METRICS_TOKEN = "a-token-for-prometheus"
    assert client.get("/metrics").status_code == 401
    bearer = {"HTTP_AUTHORIZATION": "Bearer a-token-for-prometheus"}
    assert client.get("/metrics", **bearer).status_code == 200
    wrong = {"HTTP_AUTHORIZATION": "Bearer not-it"}
    assert client.get("/metrics", **wrong).status_code == 401
