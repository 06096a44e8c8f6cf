"""Settings are read and checked at start-up: a bad value stops the program with the
variable's name; secrets may come from files (NAME_FILE)."""

import pytest

from tests.helpers import run_django

PRINT = "import django; django.setup(); from django.conf import settings; print(settings.{name})"


def start(env: dict[str, str], name: str = "DBAAS_RECONCILE_INTERVAL"):
    return run_django(PRINT.format(name=name), env)


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("DBAAS_RECONCILE_INTERVAL", "ten", "DBAAS_RECONCILE_INTERVAL must be an integer"),
        ("DBAAS_RECONCILE_INTERVAL", "0", "DBAAS_RECONCILE_INTERVAL must be at least 1"),
        ("DBAAS_PGBOUNCER_PORT", "-5", "DBAAS_PGBOUNCER_PORT must be at least 1"),
        ("DBAAS_ACTIVATOR_HANDOFF_DELAY", "soon", "must be a number"),
        ("DBAAS_ACTIVATOR_HANDOFF_DELAY", "nan", "must be a finite number"),
        ("DJANGO_DEBUG", "maybe", "DJANGO_DEBUG must be a boolean"),
        ("DBAAS_METRICS_TOKEN_FILE", "/nonexistent/token", "DBAAS_METRICS_TOKEN_FILE: cannot"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(variable, value, said):
    out = start({variable: value})
    assert out.returncode != 0
    assert said in out.stderr, out.stderr
    assert "Traceback" not in out.stderr  # one clear line, not a stack


def test_floats_and_secrets_from_files(tmp_path):
    assert (
        start(
            {"DBAAS_ACTIVATOR_HANDOFF_DELAY": "0.25"}, "DBAAS_ACTIVATOR_HANDOFF_DELAY"
        ).stdout.strip()
        == "0.25"
    )
    token = tmp_path / "token"
    token.write_text("s3cret-from-a-file\n")
    out = start({"DBAAS_METRICS_TOKEN_FILE": str(token)}, "DBAAS_METRICS_TOKEN")
    assert out.stdout.strip() == "s3cret-from-a-file", out.stderr
    both = start({"DBAAS_METRICS_TOKEN_FILE": str(token), "DBAAS_METRICS_TOKEN": "x"})
    assert both.returncode != 0 and "not both" in both.stderr
