"""POST /api/v1/accounts and /api/v1/tokens, revoking a token, and token authentication."""

import pytest

from tests.conftest import Api, signup

pytestmark = pytest.mark.django_db


def test_it_creates_an_account_with_a_token(client):
    response = Api(client).call(
        "POST", "/accounts", {"email": "New@Example.com", "password": "correct horse battery"}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["email"] == "new@example.com"
    assert body["token"].startswith("dbaas_")
    listed = Api(client, body["token"]).call("GET", "/databases")
    assert listed.status_code == 200
    assert listed.json() == {"databases": []}


@pytest.mark.parametrize("email", ["", "not-an-email", "a@", "@b.com", "a b@c.com"])
def test_it_rejects_a_bad_email(client, email):
    response = Api(client).call(
        "POST", "/accounts", {"email": email, "password": "long enough pass"}
    )
    assert response.status_code == 400
    assert "error" in response.json()


@pytest.mark.parametrize("password", ["short", "1234567890123", "password123", ""])
def test_it_rejects_a_weak_password(client, password):
    response = Api(client).call(
        "POST", "/accounts", {"email": "x@example.com", "password": password}
    )
    assert response.status_code == 400
    assert response.json()["error"]


def test_it_refuses_a_taken_email(client):
    signup(client, "taken@example.com")
    response = Api(client).call(
        "POST", "/accounts", {"email": "TAKEN@example.com", "password": "another long passphrase"}
    )
    assert response.status_code == 409
    assert "exists" in response.json()["error"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_it_rejects_bad_json(client, raw):
    response = Api(client).call("POST", "/accounts", raw=raw)
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]


def test_it_issues_a_token_for_the_right_password(client):
    signup(client, "t@example.com", "correct horse battery")
    response = Api(client).call(
        "POST", "/tokens", {"email": "t@example.com", "password": "correct horse battery"}
    )
    assert response.status_code == 200
    token = response.json()["token"]
    assert Api(client, token).call("GET", "/databases").status_code == 200


def test_a_token_can_be_revoked_and_only_that_one(client):
    first = signup(client, "r@example.com", "correct horse battery")
    second = Api(
        client,
        Api(client)
        .call("POST", "/tokens", {"email": "r@example.com", "password": "correct horse battery"})
        .json()["token"],
    )
    response = second.call("DELETE", "/tokens/current")
    assert response.status_code == 200 and response.json() == {"revoked": True}
    assert second.call("GET", "/databases").json() == {"error": "invalid token"}
    assert first.call("GET", "/databases").status_code == 200
    assert Api(client).call("DELETE", "/tokens/current").status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"email": "t@example.com", "password": "wrong password!"},
        {"email": "nobody@example.com", "password": "correct horse battery"},
        {"email": "t@example.com"},
        {},
    ],
)
def test_it_refuses_a_token_otherwise(client, body):
    signup(client, "t@example.com", "correct horse battery")
    response = Api(client).call("POST", "/tokens", body)
    assert response.status_code == 401
    assert response.json()["error"]


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer nope", "Token abc", "Basic eDp5"])
def test_it_requires_a_valid_bearer_token(client, header):
    headers = {"HTTP_AUTHORIZATION": header} if header else {}
    for method, path in [
        ("get", "/api/v1/databases"),
        ("post", "/api/v1/databases"),
        ("get", "/api/v1/databases/1"),
        ("delete", "/api/v1/databases/1"),
        ("post", "/api/v1/databases/1/password"),
    ]:
        response = getattr(client, method)(path, **headers)
        assert response.status_code == 401, (method, path)
        assert response.json()["error"]


def test_it_answers_unknown_api_paths_and_methods_in_json(client, alice):
    response = alice.call("GET", "/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"error": "not found"}
    response = alice.call("PUT", "/databases", {})
    assert response.status_code == 405
    assert response.json()["error"]
