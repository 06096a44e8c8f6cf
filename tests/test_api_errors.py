"""How the API answers what does not fit (tenants/api/errors.py, parser.py, auth.py):
one sentence in `{"error": "..."}` naming the field or parameter, the status the
domain error maps to, and never a framework's own error format."""

import pytest

from tests.conftest import Api

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/databases", {"name": 42}, 400, "field 'name' must be a string"),
        ("POST", "/databases", {}, 400, "field 'name' is required"),
        ("POST", "/databases", None, 400, "a JSON object is required as the request body"),
        ("POST", "/databases", [1], 400, "request body must be a JSON object"),
        ("POST", "/databases", "app", 400, "request body must be a JSON object"),
        ("POST", "/databases/1/backups", {"kind": "tar"}, 400, "field 'kind' must be"),
        ("POST", "/backups/1/restore", {"name": None}, 400, "field 'name' must be a string"),
        ("DELETE", "/databases/1?purge=maybe", None, 400, "'purge' must be true or false"),
        ("GET", "/databases/abc", None, 404, "database abc not found"),
        ("GET", "/databases/1/backups/x", None, 404, "backup x not found"),
        ("GET", "/databases/1/restores/1.5", None, 404, "restore 1.5 not found"),
        ("GET", "/databases/999999", None, 404, "database 999999 not found"),
        ("PUT", "/databases", {}, 405, "method PUT not allowed"),
    ],
)
def test_bad_requests_get_one_clear_sentence(alice, method, path, body, status, message):
    response = alice.call(method, path, body)
    assert response.status_code == status, response.content
    assert set(response.json()) == {"error"}
    assert message in response.json()["error"]


def test_a_body_is_parsed_before_anything_is_done(alice):
    for raw in (b"{not json", b"\xff\xfe", b'{"name": "\\ud800"}', b"[" * 100_000):
        response = alice.call("POST", "/databases", raw=raw)
        assert response.status_code == 400, (raw[:20], response.content)
        assert response.json() == {"error": "request body is not valid JSON"}


def test_a_missing_token_and_a_wrong_one_are_told_apart(client):
    missing = Api(client).call("GET", "/databases")
    assert missing.status_code == 401
    assert "missing bearer token" in missing.json()["error"]
    wrong = Api(client, "not-a-token").call("GET", "/databases")
    assert wrong.status_code == 401
    assert wrong.json() == {"error": "invalid token"}


def test_405_names_the_allowed_methods(client):
    response = client.put("/api/v1/databases/1/backups")
    assert response.status_code == 405
    assert set(response["Allow"].split(", ")) == {"GET", "POST"}
    assert response.json() == {"error": "method PUT not allowed"}
    healthz = client.post("/healthz")
    assert healthz.status_code == 405 and healthz["Allow"] == "GET"
    assert healthz.json()["error"]
