"""The `dbaas` command line as a user runs it: the installed executable, in a
subprocess, against a live HTTP server of the app with the real worker and pooler."""

import hashlib
import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import connect

pytestmark = pytest.mark.timeout(120)

DBAAS = Path(sys.executable).parent / "dbaas"
PASSWORD = "correct horse battery staple"
URL = re.compile(r"postgresql://\S+")


class Cli:
    """The dbaas executable with a config directory of its own (one per test)."""

    def __init__(self, home: Path) -> None:
        self.config = home / "config" / "dbaas" / "config.json"
        # Nothing of the test session's environment (DBAAS_*) may reach the client:
        # it must work from its options and config file alone.
        env = {k: v for k, v in os.environ.items() if not k.startswith("DBAAS_")}
        self.env = env | {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "config")}

    def __call__(self, *args: str, code: int = 0, input: str | None = None, env=None):
        result = subprocess.run(
            [str(DBAAS), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env | (env or {}),
            # No controlling terminal: hidden prompts read stdin, as in a pipe.
            start_new_session=True,
        )
        assert result.returncode == code, (args, result.returncode, result.stdout, result.stderr)
        if code:
            assert "Traceback" not in result.stderr, result.stderr
        return result

    def json(self, *args: str):
        return json.loads(self("--json", *args).stdout)

    def saved(self) -> dict:
        return json.loads(self.config.read_text())


def error_line(result) -> str:
    """The one line an expected failure prints (the confirmation prompt aside)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def count(url: str) -> int:
    with connect(url) as conn:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]


@pytest.fixture
def cli(tmp_path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def server(live, live_server) -> str:
    return live_server.url


@pytest.fixture
def alice(cli, server) -> Cli:
    cli("--api-url", server, "signup", "--email", "alice@example.com", "--password", PASSWORD)
    return cli


def test_a_session_from_signup_to_delete(cli, server):
    # Sign up with the prompts (password hidden, asked twice), as a person would.
    out = cli("--api-url", server, "signup", input=f"alice@example.com\n{PASSWORD}\n{PASSWORD}\n")
    assert "Logged in" in out.stdout and "alice@example.com" in out.stdout
    saved = cli.saved()
    assert saved["api_url"] == server and saved["token"].startswith("dbaas_")
    assert stat.S_IMODE(cli.config.stat().st_mode) == 0o600
    assert stat.S_IMODE(cli.config.parent.stat().st_mode) == 0o700

    token = saved["token"]
    assert "Logged out alice@example.com" in cli("logout").stdout
    assert "token" not in cli.saved()
    # Revoked on the server too: the old token is refused.
    again = cli("--token", token, "db", "list", code=1)
    assert error_line(again).startswith("error: invalid token")
    assert "not logged in" in error_line(cli("db", "list", code=1))
    # The API URL was kept: login goes to the same server without --api-url.
    wrong = cli("login", "--email", "alice@example.com", "--password", "wrong", code=1)
    assert error_line(wrong) == "error: invalid email or password"
    cli("login", "--email", "alice@example.com", "--password", PASSWORD)
    assert cli.saved()["token"]
    assert stat.S_IMODE(cli.config.stat().st_mode) == 0o600

    created = cli("db", "create", "shop").stdout
    direct, pooled = URL.findall(created)
    assert "_pooled?" in pooled
    with connect(direct) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with connect(pooled, prepare_threshold=None) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    bad = error_line(cli("db", "create", "Bad-Name", code=1))
    assert bad.startswith("error: ") and "lowercase letters" in bad

    header, row = cli("db", "list").stdout.splitlines()
    assert header.split()[:3] == ["NAME", "STATE", "HOST:PORT"]
    name, state, hostport = row.split()[:3]
    assert (name, state) == ("shop", "running")
    assert hostport == direct.split("@")[1].split("/")[0]
    listed = cli.json("db", "list")["databases"]
    assert [d["name"] for d in listed] == ["shop"]
    assert "password" not in listed[0]

    shown = cli("db", "show", "shop").stdout
    assert re.search(r"^state\s+running$", shown, re.M), shown
    assert re.search(rf"^user\s+{listed[0]['user']}$", shown, re.M), shown
    assert "postgresql://" not in shown
    assert cli.json("db", "show", "shop")["id"] == listed[0]["id"]
    assert "no database named 'nope'" in error_line(cli("db", "show", "nope", code=1))

    # A new password: the old string is refused, the new one works.
    new = cli("db", "url", "shop").stdout.strip()
    assert URL.fullmatch(new) and new != direct
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        connect(direct)
    with connect(new) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert cli("db", "url", "--pooled", "shop").stdout.strip().split("?")[0].endswith("_pooled")

    backup = cli("backup", "create", "shop", "--wait").stdout
    assert re.search(r"^state\s+done$", backup, re.M), backup
    header, row = cli("backup", "list", "shop").stdout.splitlines()
    assert header.split() == ["ID", "KIND", "STATE", "SIZE", "CREATED", "VERIFIED"]
    assert row.split()[1:3] == ["base", "done"]
    [listed_backup] = cli.json("backup", "list", "shop")["backups"]
    assert listed_backup["state"] == "done" and len(listed_backup["sha256"]) == 64

    # Deleting asks first; "n" keeps the database.
    refused = cli("db", "delete", "shop", input="n\n", code=1)
    assert "Delete database 'shop'" in refused.stderr
    assert cli.json("db", "show", "shop")["state"] == "running"
    assert cli("db", "delete", "shop", "--yes").stdout.strip() == "shop: deleting"
    assert {d["state"] for d in cli.json("db", "list")["databases"]} <= {"deleting"}


def test_logical_export_download_and_restores(alice, tmp_path):
    direct = URL.findall(alice("db", "create", "keep").stdout)[0]
    with connect(direct) as conn:
        conn.execute("CREATE TABLE t (v int)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 100)")

    export = alice.json("backup", "create", "keep", "--logical", "--wait")
    assert (export["kind"], export["state"]) == ("logical", "done")
    target = tmp_path / "keep.dump"
    out = alice("backup", "download", "keep", str(export["id"]), "-o", str(target))
    assert "sha256 verified" in out.stdout
    body = target.read_bytes()
    assert body.startswith(b"PGDMP")  # pg_dump's custom format
    assert hashlib.sha256(body).hexdigest() == export["sha256"]

    physical = alice.json("backup", "create", "keep", "--wait")
    assert physical["state"] == "done"
    other = tmp_path / "x.dump"
    refused = alice("backup", "download", "keep", str(physical["id"]), "-o", str(other), code=1)
    assert "only logical exports" in error_line(refused)
    assert not other.exists()

    with connect(direct) as conn:
        conn.execute("DELETE FROM t WHERE v > 10")
    restored = alice("backup", "restore", "keep", str(physical["id"]), "--wait", "--yes")
    assert re.search(r"^state\s+done$", restored.stdout, re.M), restored.stdout
    assert count(direct) == 100

    copy = alice("backup", "restore", "keep", str(physical["id"]), "--new", "copy").stdout
    assert count(URL.findall(copy)[0]) == 100
    assert [d["name"] for d in alice.json("db", "list")["databases"]] == ["keep", "copy"]


def test_api_errors_are_one_line_and_exit_1(alice):
    for name in ("a", "b", "c"):
        alice("db", "create", name)
    over = error_line(alice("db", "create", "d", code=1))
    assert over == "error: the free plan allows 3 databases; delete one to create another"
    taken = alice("signup", "--email", "alice@example.com", "--password", PASSWORD, code=1)
    assert "already exists" in error_line(taken)
    bogus = alice("db", "list", code=1, env={"DBAAS_TOKEN": "dbaas_bogus"})
    assert "invalid token" in error_line(bogus)


def test_not_logged_in(cli):
    for args in (["db", "list"], ["db", "show", "x"], ["backup", "list", "x"]):
        failed = cli(*args, code=1)
        assert failed.stdout == ""
        assert failed.stderr == (
            "error: not logged in to http://127.0.0.1:8000 (run: dbaas login, or set DBAAS_TOKEN)\n"
        )
    assert cli("db", "show", code=2).stderr.startswith("Usage:")  # click's usage errors


def test_an_unreachable_server_exits_3(cli):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    failed = cli("--api-url", url, "login", "--email", "a@example.com", "--password", "x", code=3)
    assert error_line(failed).startswith(f"error: cannot reach {url}")
    env = {"DBAAS_API_URL": url, "DBAAS_TOKEN": "dbaas_x"}
    assert "cannot reach" in error_line(cli("db", "list", code=3, env=env))


def test_trust_adds_the_platforms_ca_for_libpq_once(alice, tmp_path):
    created = alice("db", "create", "tls")
    direct, _pooled = URL.findall(created.stdout)
    assert "run `dbaas trust` once first" in created.stderr
    home = Path(alice.env["HOME"])
    env = {k: v for k, v in os.environ.items() if k != "PGSSLROOTCERT"} | {"HOME": str(home)}
    psql = ["psql", direct, "-Atc", "SELECT 1"]
    # verify-full with nothing to verify against: libpq refuses.
    refused = subprocess.run(psql, env=env, capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "root.crt" in refused.stderr
    clean = {k: v for k, v in alice.env.items() if k != "PGSSLROOTCERT"}
    alice.env = clean
    assert "Added" in alice("trust").stdout
    assert "Already in" in alice("trust").stdout  # a second run adds nothing
    root = home / ".postgresql" / "root.crt"
    assert root.read_text().count("BEGIN CERTIFICATE") == 1
    accepted = subprocess.run(psql, env=env, capture_output=True, text=True, timeout=30)
    assert accepted.returncode == 0 and accepted.stdout.strip() == "1", accepted.stderr
