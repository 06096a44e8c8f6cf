"""The README's "Use it from your app" snippets, run as they are written against a
real database, with DATABASE_URL and POOLED_DATABASE_URL set to the strings the API
returned (psql, psycopg 3, SQLAlchemy, Django with its test runner, node-postgres)."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dbaas.env import BASE_DIR
from tenants.models import TenantDatabase
from tests.conftest import connect
from tests.helpers import create

pytestmark = pytest.mark.timeout(300)

SNIPPET = re.compile(r"<!-- snippet: (?P<name>[\w-]+) -->\n```\w+\n(?P<code>.*?)\n```", re.S)
NODE_MODULES = BASE_DIR / "build" / "node" / "node_modules"  # scripts/setup.sh test


def snippets() -> dict[str, str]:
    return {m["name"]: m["code"] for m in SNIPPET.finditer((BASE_DIR / "README.md").read_text())}


@pytest.fixture
def database(live, alice):
    return create(alice, "snippets")


@pytest.fixture
def env(database, live_server, tmp_path) -> dict[str, str]:
    """A user's shell on a fresh machine that has run the README's "trust" snippet
    (against this test's web server): nothing else tells libpq about the CA."""
    home = tmp_path / "home"
    home.mkdir()
    base = {k: v for k, v in os.environ.items() if k != "PGSSLROOTCERT"} | {"HOME": str(home)}
    trust = snippets()["trust"].replace("http://127.0.0.1:8000", live_server.url)
    run(["sh", "-c", trust], base)
    assert (home / ".postgresql" / "root.crt").read_text().startswith("-----BEGIN CERTIFICATE")
    return base | {
        "DATABASE_URL": database["connection_string"],
        "POOLED_DATABASE_URL": database["pooled_connection_string"],
    }


def run(args: list[str], env: dict, cwd: Path | None = None, stderr: bool = True) -> str:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + (proc.stderr if stderr else "")


def test_the_readme_has_every_snippet_these_tests_run():
    expected = {"trust", "psql", "psycopg", "sqlalchemy", "django", "node-postgres"}
    assert set(snippets()) == expected


def test_psql(database, env):
    out = run(["sh", "-c", snippets()["psql"]], env)
    assert database["database"] in out


def test_psycopg_on_the_pooled_string(env):
    out = run([sys.executable, "-c", snippets()["psycopg"]], env)
    assert out.startswith("PostgreSQL ")


def test_sqlalchemy(env):
    out = run([sys.executable, "-c", snippets()["sqlalchemy"]], env)
    assert out.strip().endswith("1")


DJANGO_TESTS = """
from django.test import TestCase
from django.db import connection

from notes.models import Note


class NoteTests(TestCase):
    def test_it_saves_a_note(self):
        Note.objects.create(body="hello")
        self.assertEqual(Note.objects.count(), 1)
        print("TEST DATABASE", connection.settings_dict["NAME"])
"""


def test_djangos_test_runner_creates_and_drops_its_test_database(database, env, tmp_path):
    (tmp_path / "manage.py").write_text(
        "import os, sys\n"
        'os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")\n'
        "from django.core.management import execute_from_command_line\n"
        "execute_from_command_line(sys.argv)\n"
    )
    (tmp_path / "settings.py").write_text(
        snippets()["django"]
        + textwrap.dedent("""
            SECRET_KEY = "test"
            INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "notes"]
            USE_TZ = True
            DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
        """)
    )
    app = tmp_path / "notes"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "models.py").write_text(
        "from django.db import models\n\n\n"
        "class Note(models.Model):\n    body = models.TextField()\n"
    )
    (app / "tests.py").write_text(DJANGO_TESTS)
    django_env = env | {"DJANGO_SETTINGS_MODULE": "settings"}  # not the platform's own
    out = run([sys.executable, "manage.py", "test", "-v", "2"], django_env, cwd=tmp_path)
    test_database = f"test_{database['database']}"
    assert f"TEST DATABASE {test_database}" in out
    assert "OK" in out
    # Made on the tenant's server, routed, then dropped and forgotten.
    with connect(database["connection_string"]) as conn:
        names = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
    assert test_database not in names
    assert not TenantDatabase.objects.filter(name=test_database).exists()


def test_node_postgres_with_the_platforms_ca(client, env, tmp_path):
    ca = tmp_path / "dbaas-ca.pem"
    response = client.get("/api/v1/ca.pem")
    assert response.status_code == 200
    ca.write_bytes(response.content)
    (tmp_path / "app.js").write_text(snippets()["node-postgres"])
    node_env = env | {"NODE_PATH": str(NODE_MODULES)}
    # It checks the certificate: without the CA it refuses to go on.
    refused = subprocess.run(
        ["node", "app.js"], env=node_env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0 and "certificate" in refused.stderr
    trusted = node_env | {"NODE_EXTRA_CA_CERTS": str(ca)}
    out = run(["node", "app.js"], trusted, cwd=tmp_path, stderr=False)
    assert out.split() == ["1", "2", "3"]
