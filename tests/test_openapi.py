"""The OpenAPI document (GET /api/v1/openapi.json, tenants/openapi.py): it names every
API route with exactly the methods its view allows, it is valid OpenAPI, and the
running app (real worker, pooler and instances) answers as it says, checked by a
bounded schemathesis run with a real account's token."""

import os
import re
from collections import Counter

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from django.urls import URLResolver, get_resolver, resolve
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tenants import openapi
from tenants.models import Backup, Plan, Restore, Tenant
from tests.conftest import Api, connect, signup, wait_until

pytestmark = pytest.mark.timeout(240)

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def url_routes(patterns=None, prefix: str = ""):
    """Every route of the URL resolver, as an OpenAPI path: `<str:x>` -> `{x}`."""
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from url_routes(pattern.url_patterns, route)
        else:
            yield "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


def documented_methods(item: dict) -> set[str]:
    return {m.upper() for m in item if m.upper() in METHODS}


def concrete(path: str) -> str:
    return re.sub(r"\{\w+\}", "1", path)


def test_every_api_route_is_documented_and_every_documented_path_resolves():
    doc = openapi.document()
    api_routes = {r for r in url_routes() if r.startswith("/api/")}
    assert "/api/v1/databases/{tenant_id}/backups/{backup_id}/restore" in api_routes
    assert api_routes == {p for p in doc["paths"] if p.startswith("/api/")}
    assert "/healthz" in doc["paths"]
    for path in doc["paths"]:
        resolve(concrete(path))  # raises Resolver404 if it is not a route


def test_the_served_document_keeps_every_operation_and_status_of_the_snapshot(client):
    """The API's contract as it was when the snapshot was made (2026-11-29): every
    operation and each of its documented statuses is still served. New ones may be
    added; to drop one, change the snapshot in the same commit, on purpose."""
    import json
    from pathlib import Path

    snapshot = json.loads(
        (Path(__file__).parent / "snapshots" / "openapi_operations.json").read_text()
    )
    served = client.get("/api/v1/openapi.json").json()
    now = {
        f"{method.upper()} {path}": set(op["responses"])
        for path, item in served["paths"].items()
        for method, op in item.items()
        if method.upper() in METHODS
    }
    missing = {op: statuses for op, statuses in snapshot.items() if op not in now}
    assert not missing, missing
    fewer = {op: set(statuses) - now[op] for op, statuses in snapshot.items()}
    assert not any(fewer.values()), {op: s for op, s in fewer.items() if s}


def test_documented_methods_are_exactly_the_allowed_ones(db, client):
    doc = openapi.document()
    for path, item in doc["paths"].items():
        allowed = documented_methods(item)
        for method in METHODS:
            response = client.generic(method, concrete(path))
            if method in allowed:
                assert response.status_code != 405, (method, path)
            else:
                assert response.status_code == 405, (method, path, response.status_code)
                if method != "HEAD":  # answered without its body
                    assert response.json()["error"]
                assert set(response["Allow"].split(", ")) == allowed, (method, path)


def test_the_document_is_valid_openapi_and_served_as_json(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body == openapi.document()
    assert body["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(body)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(documented_methods(i)) for i in body["paths"].values())
    # Every state a database can be in is named (`deleted` only in a DELETE answer).
    states = body["components"]["schemas"]["Database"]["properties"]["state"]["enum"]
    assert set(Tenant.State.values) <= set(states)
    assert "suspended" in states


def test_the_docs_page_shows_every_operation(db, client):
    response = client.get("/api/docs")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert 'href="/api/v1/openapi.json"' in page
    for path, item in openapi.document()["paths"].items():
        for method in documented_methods(item):
            assert f'<span class="method">{method}</span> <span class="path">{path}</span>' in page
    for name in ("Database", "DatabaseWithCredentials", "Backup", "Restore", "Error"):
        assert f'id="schema-{name}"' in page
    assert "pooled_connection_string" in page


# -- schemathesis against the running app ---------------------------------------------------

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]

# Read-only operations first, the ones that change the seed database later, and
# deleting it last. Examples per operation (positive, negative): password hashing
# (accounts, tokens) and provisioning are the slow ones.
PLAN = {
    "getDocs": (3, 0),
    "health": (3, 0),
    "getCaCertificate": (2, 0),
    "createAccount": (8, 6),
    "createToken": (5, 5),
    "listDatabases": (5, 3),
    "getDatabase": (12, 6),
    "listBackups": (12, 6),
    "getBackup": (12, 6),
    "downloadBackup": (12, 6),
    "listAccountBackups": (5, 3),
    "resetPassword": (8, 6),
    "sleepDatabase": (6, 6),
    "wakeDatabase": (6, 6),
    "createBackup": (10, 8),
    "restoreBackup": (12, 8),
    "getRestore": (12, 6),
    "restoreBackupIntoNew": (10, 8),
    "createDatabase": (12, 10),
    "deleteDatabase": (10, 6),
    "revokeToken": (1, 0),  # the fuzzer's own token: last
}


def quiet() -> bool:
    """No work left for the worker (the next operation is not delayed by it, and the
    test database may be flushed)."""
    return not (
        Tenant.objects.filter(state__in=["provisioning", "deleting"]).exists()
        or Backup.objects.filter(state__in=["pending", "running"]).exists()
        or Restore.objects.filter(state__in=["pending", "running"]).exists()
    )


def seed(api) -> dict:
    """A database with a logical export and a physical backup."""
    db = api.call("POST", "/databases", {"name": "seed"}).json()
    export = api.call("POST", f"/databases/{db['id']}/backups", {"kind": "logical"}).json()
    physical = api.call("POST", f"/databases/{db['id']}/backups").json()
    wait_until(lambda: Backup.objects.filter(state="done").count() == 2)
    return {"db": db, "export": export, "physical": physical}


def real_path_parameters(seeded: dict, names: set[str]) -> list[dict]:
    """Path parameters naming the seed database and its backups and restores."""
    tenant_id = seeded["db"]["id"]
    restores = list(Restore.objects.filter(tenant_id=tenant_id).values_list("pk", flat=True))
    choices = {
        "tenant_id": [tenant_id],
        "backup_id": [seeded["export"]["id"], seeded["physical"]["id"]],
        "restore_id": restores,
    }
    found = [{}]
    for name in sorted(names):
        found = [{**f, name: value} for f in found for value in choices.get(name, [])]
    return found if names else []


def test_the_running_api_answers_as_documented(live, client):
    # Room for the databases the fuzzer makes besides the seed, then the quota's 403.
    Plan.objects.filter(name="free").update(max_databases=5)
    alice = signup(client, "fuzz@example.com")
    seeded = seed(alice)
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application())
    operations = {
        op.ok().definition.raw["operationId"]: op.ok() for op in schema.get_all_operations()
    }
    # schemathesis leaves out the operation that serves the document it loaded.
    assert set(operations) == set(PLAN) - {"getOpenApi"}
    auth = {"Authorization": f"Bearer {alice.token}"}
    failures: list[str] = []
    seen: Counter = Counter()  # (operation, status) -> responses, printed with -s
    try:
        for operation_id, (positive, negative) in PLAN.items():
            operation = operations[operation_id]
            # Random path parameters mostly answer 404; positive cases also name the
            # seed database and its backups, to reach the code behind the lookups.
            names = {p.name for p in operation.path_parameters}
            real = real_path_parameters(seeded, names)
            for mode, examples in (
                (schemathesis.GenerationMode.POSITIVE, positive),
                (schemathesis.GenerationMode.NEGATIVE, negative),
            ):
                strategy = operation.as_strategy(generation_mode=mode)
                if mode.is_positive and real:
                    strategy = st.one_of(
                        strategy,
                        *(operation.as_strategy(path_parameters=ids) for ids in real),
                    )
                try:
                    fuzz(strategy, examples, auth, seen)
                except (Exception, FailureGroup) as exc:
                    failures.append(f"{operation.label} ({mode.value}):\n{exc}")
                wait_until(quiet)
    finally:
        wait_until(quiet)
    for (label, status), count in sorted(seen.items()):
        print(f"{label}: {status} x{count}")
    assert not failures, "\n\n".join(failures)


# DBAAS_FUZZ_SCALE=10 make test ... runs ten times as many examples (a longer hunt),
# with fresh random ones each time; the default run is the same every time, so
# that what it finds is reproducible and `make test` does not flicker.
FUZZ_SCALE = float(os.environ.get("DBAAS_FUZZ_SCALE", "1"))


def fuzz(strategy, examples: int, headers: dict, seen: Counter) -> None:
    examples = round(examples * FUZZ_SCALE)
    if not examples:
        return

    @hypothesis_settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
        derandomize=FUZZ_SCALE == 1,
    )
    @given(case=strategy)
    def run(case):
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        seen[case.operation.label, response.status_code] += 1

    run()


# -- what the fuzzer found ---------------------------------------------------------------


def test_restores_that_cannot_work_are_refused(live, client):
    alice = signup(client, "restorer@example.com")
    seeded = seed(alice)
    db, export, physical = seeded["db"], seeded["export"], seeded["physical"]
    # A logical export is a pg_dump file, not a data directory: a new database made
    # from it used to fail (500, and a failed database left to delete).
    for path, body in [
        (f"/backups/{export['id']}/restore", {"name": "fromdump"}),
        (f"/databases/{db['id']}/backups/{export['id']}/restore", {"target": "new"}),
    ]:
        response = alice.call("POST", path, body)
        assert response.status_code == 409, response.content
        assert "pg_restore" in response.json()["error"]
    assert Tenant.objects.count() == 1
    # Two in-place restores of one database at once used to share the host's side
    # directory and could leave the database with no data directory at all.
    path = f"/databases/{db['id']}/backups/{physical['id']}/restore"
    first = alice.call("POST", path)
    assert first.status_code == 202, first.content
    second = alice.call("POST", path)
    assert second.status_code == 409, second.content
    assert "not finished" in second.json()["error"]
    wait_until(quiet)
    assert (
        alice.call("GET", f"/databases/{db['id']}/restores/{first.json()['id']}").json()["state"]
        == "done"
    )
    with connect(db["connection_string"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize(
    ("path", "raw", "status"),
    [
        # PostgreSQL refuses a NUL even in a query: the token lookup answered 500.
        ("/tokens", b'{"email": "a\\u0000b@example.com", "password": "long enough pass"}', 401),
        # Lone surrogates parse as JSON but no UTF-8 encoder takes them (500s).
        ("/tokens", b'{"email": "\\ud800@example.com", "password": "long enough pass"}', 400),
        ("/tokens", b'{"email": "a@example.com", "password": "long \\udfff enough"}', 400),
        ("/accounts", b'{"email": "a@example.com", "password": "long \\ud800 enough"}', 400),
        # Nesting deeper than Python's recursion limit (RecursionError, 500).
        ("/accounts", b"[" * 100_000, 400),
    ],
)
def test_odd_bodies_are_refused_not_crashed_on(db, client, path, raw, status):
    response = Api(client).call("POST", path, raw=raw)
    assert response.status_code == status, response.content
    assert response.json()["error"]
