"""Host tokens (tenants/host/identity.py, tenants/host_identity.py): a report is
applied only if the host it names signed it; `host_token` shows and rotates a
host's token; a host without a usable token does not start; a host's certificate
request is signed for the address it registered, whatever names it asks for."""

import io
import subprocess

import pytest
from celery import current_app
from django.core.management import CommandError, call_command

from poolers import tls
from tenants import host_identity
from tenants.host import identity
from tenants.models import Host, Tenant
from tests.conftest import wait_until
from tests.helpers import create, reports_applied


def _note(host_name: str, tenant_pk: int, text: str, signature: str | None) -> None:
    """The host's `note` report (the tenant's state reason), as any Redis client
    could put it on the control queue."""
    args = (host_name, tenant_pk, text)
    kwargs = {} if signature is None else {"host_signature": signature}
    current_app.send_task("tenants.reports.note", args, kwargs, queue="control")


def _signed(key: bytes, host_name: str, tenant_pk: int, text: str) -> str:
    return identity.report_signature(key, "tenants.reports.note", (host_name, tenant_pk, text))


def _reason(tenant_pk: int) -> str:
    return Tenant.objects.get(pk=tenant_pk).state_reason


def test_a_report_is_applied_only_if_its_host_signed_it(live, alice):
    db = create(alice, "signed")
    host = live.name
    own = host_identity.issue(host).key
    stranger = host_identity.issue("another-host").key  # a host of the platform
    forged = [
        ("unsigned", None),
        ("signed by another host", _signed(stranger, host, db["id"], "signed by another host")),
        ("signed over other words", _signed(own, host, db["id"], "what the host said")),
        ("garbage", "00" * 32),
    ]
    for text, signature in forged:
        _note(host, db["id"], text, signature)
    reports_applied()
    assert _reason(db["id"]) not in {text for text, _ in forged}

    # The host's own signature is applied (so the ones above were dropped for their
    # signatures, not for anything else).
    _note(host, db["id"], "from its host", _signed(own, host, db["id"], "from its host"))
    wait_until(lambda: _reason(db["id"]) == "from its host", timeout=10)

    # A rotated token: the old one's reports are dropped, the new one's applied.
    try:
        call_command("host_token", host, "--rotate", stdout=io.StringIO(), stderr=io.StringIO())
        _note(host, db["id"], "old token", _signed(own, host, db["id"], "old token"))
        reports_applied()
        assert _reason(db["id"]) == "from its host"
        new = host_identity.issue(host).key
        assert new != own
        _note(host, db["id"], "new token", _signed(new, host, db["id"], "new token"))
        wait_until(lambda: _reason(db["id"]) == "new token", timeout=10)
    finally:
        # The session's host keeps signing with the token it started with.
        Host.objects.filter(name=host).update(token_generation=1)


@pytest.mark.django_db
def test_host_token_shows_the_same_token_until_rotated():
    def run(*args: str) -> str:
        out, err = io.StringIO(), io.StringIO()
        call_command("host_token", *args, stdout=out, stderr=err)
        assert "manage.py run_host" in err.getvalue()
        return out.getvalue().strip()

    first = run("edge-1")
    assert run("edge-1") == first
    token = identity.parse(first)
    assert (token.name, token.generation) == ("edge-1", 1)
    rotated = identity.parse(run("edge-1", "--rotate"))
    assert rotated.generation == 2 and rotated.key != token.key
    assert Host.objects.get(name="edge-1").token_generation == 2
    with pytest.raises(CommandError, match="letters, digits"):
        run("not a name")


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "has no token: on the control plane, run `manage.py host_token"),
        ("dbaas-host:elsewhere:1:" + "A" * 43, "is for host 'elsewhere'"),
        ("a password", "not a host token"),
    ],
)
def test_a_host_without_its_token_does_not_start(tmp_path, settings, token, message):
    settings.DBAAS_HOST_TOKEN, settings.DATA_DIR = token, tmp_path
    with pytest.raises(CommandError, match=message):
        call_command("run_host")
    assert not (tmp_path / "host.sqlite3").exists()  # nothing started


def test_a_certificate_request_gets_only_the_registered_address(tmp_path):
    """A host's request may ask for any name; the certificate names only the address
    its (signed) registration gave, and is checked against the platform's CA."""
    ca = tmp_path / "ca"
    tls.ensure_ca(ca)
    key = tmp_path / "host" / "host.key"
    key.parent.mkdir()
    request = subprocess.run(
        [
            "openssl", "req", "-new", "-key", str(_key(key)),
            "-subj", "/CN=bank.example",
            "-addext", "subjectAltName=DNS:bank.example,IP:10.0.0.1",
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    issued = tmp_path / "host" / "host.crt"
    issued.write_text(tls.sign_request(ca, request, "10.87.0.3"))
    tls.install_host_certificate(tmp_path / "host", issued.read_text(), (ca / "ca.crt").read_text())
    assert tls.certificate_fits(issued, tmp_path / "host" / "ca.crt", "10.87.0.3")
    names = subprocess.run(
        ["openssl", "x509", "-in", str(issued), "-noout", "-subject", "-ext", "subjectAltName"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "bank.example" not in names and "10.0.0.1" not in names
    assert "10.87.0.3" in names
    # A request altered on the way is refused.
    lines = request.splitlines()
    lines[3] = lines[3][:20] + ("B" if lines[3][20] != "B" else "C") + lines[3][21:]
    with pytest.raises(tls.TlsError):
        tls.sign_request(ca, "\n".join(lines) + "\n", "10.87.0.3")
    # The host's key never left: the request is all the control plane saw.
    assert not (ca / "host.key").exists()


def _key(path):
    """A key, as tls.host_request makes it on a host."""
    tls.host_request(path, "unused")
    return path
