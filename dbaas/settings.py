"""Django settings for the dbaas control plane.

Every value comes from the environment with a default that works on one machine
(`make run` needs nothing set); see README.md for the variables.
"""

import os
import socket

import dj_database_url

from dbaas.env import (
    BASE_DIR,
    data_dir,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_secret,
    env_str,
    pgbouncer_binary,
    services_dir,
)

DATA_DIR = data_dir()
# Where the platform's own control-plane cluster and Redis live; the tests point
# DBAAS_DATA_DIR at a directory of their own but share these.
SERVICES_DIR = services_dir()

SECRET_KEY = env_secret("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    # A per-installation key kept with the rest of the state, made on first use.
    _key_file = DATA_DIR / "secret_key"
    if not _key_file.exists():
        import secrets

        DATA_DIR.mkdir(parents=True, exist_ok=True)
        _key_file.write_text(secrets.token_urlsafe(50))
        _key_file.chmod(0o600)
    SECRET_KEY = _key_file.read_text().strip()

DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_str("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",")
CSRF_TRUSTED_ORIGINS = [o for o in env_str("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

# Where users reach the web console. Served over https (by a proxy in front that
# terminates TLS and says so in X-Forwarded-Proto), cookies are sent only over
# TLS and browsers are told to use nothing else (HSTS).
DBAAS_PUBLIC_URL = env_str("DBAAS_PUBLIC_URL", "").rstrip("/")
if DBAAS_PUBLIC_URL.startswith("https://"):
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = 365 * 24 * 3600
    SECURE_HSTS_INCLUDE_SUBDOMAINS = False  # the operator's other names are not ours
    CSRF_TRUSTED_ORIGINS.append(DBAAS_PUBLIC_URL)
    ALLOWED_HOSTS.append(DBAAS_PUBLIC_URL.removeprefix("https://").split("/")[0].split(":")[0])
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Pages load scripts and styles from this site only; no page may frame them.
# Inline styles stay allowed (the admin and the meters use them); inline scripts not.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

INSTALLED_APPS = [
    "tenants.apps.DbaasAdminConfig",  # django.contrib.admin, our index
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ninja",  # its templates and static files: the API docs page works offline
    "dbaas",
    "tenants",
    "poolers",
    "unikernel_images",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "dbaas.middleware.ContentSecurityPolicyMiddleware",
    "dbaas.middleware.ApiMethodNotAllowedMiddleware",
    "dbaas.middleware.DependencyUnavailableMiddleware",
]

ROOT_URLCONF = "dbaas.urls"
WSGI_APPLICATION = "dbaas.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# The control-plane database: DATABASE_URL, else the platform's own cluster
# (started by `make run`) reached over its unix socket.
CONTROLPLANE_SOCKET_DIR = SERVICES_DIR / "run" / "controlplane"
_database_url = env_str("DATABASE_URL", "")
if _database_url:
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=60)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": env_str("DBAAS_DB_NAME", "dbaas"),
            "USER": "dbaas",
            "HOST": str(CONTROLPLANE_SOCKET_DIR),
            "PORT": "5432",
            "CONN_MAX_AGE": 60,
        }
    }
DATABASES["default"].setdefault("TEST", {})["NAME"] = env_str("DBAAS_TEST_DB_NAME", "test_dbaas")
# A host's own processes (manage.py run_host sets it for them) have no control-plane
# database at all: any query raises. The host side works from what it holds
# (tenants/host/store.py) and reports by task name (docs/fleet.md).
DBAAS_HOST_ONLY = env_bool("DBAAS_HOST_ONLY", False)
if DBAAS_HOST_ONLY:
    DATABASES = {"default": {"ENGINE": "django.db.backends.dummy"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
    # Not a check: Django tells validators when a password changed; this one then
    # revokes the account's API tokens (tenants/validators.py).
    {"NAME": "tenants.validators.RevokeTokensOnPasswordChange"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
# Sign-ups allowed per client IP address and hour (web and API).
DBAAS_SIGNUPS_PER_IP_HOUR = env_int("DBAAS_SIGNUPS_PER_IP_HOUR", 10)
DBAAS_TRUSTED_PROXIES = [p for p in env_str("DBAAS_TRUSTED_PROXIES", "").split(",") if p]
# Failed logins (API tokens and web) before more attempts are refused for 15 minutes.
DBAAS_LOGIN_FAILURES_PER_ACCOUNT = env_int("DBAAS_LOGIN_FAILURES_PER_ACCOUNT", 10)
DBAAS_LOGIN_FAILURES_PER_IP = env_int("DBAAS_LOGIN_FAILURES_PER_IP", 50)
DBAAS_RESET_MAILS_PER_HOUR = env_int("DBAAS_RESET_MAILS_PER_HOUR", 3)
# Backups an account may have queued or running at once (429 beyond).
DBAAS_BACKUPS_UNFINISHED_PER_ACCOUNT = env_int("DBAAS_BACKUPS_UNFINISHED_PER_ACCOUNT", 3)

# Password-reset mail: printed on the console unless an SMTP server is set.
EMAIL_HOST = env_str("DBAAS_SMTP_HOST", "")
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_PORT = env_int("DBAAS_SMTP_PORT", 587, minimum=1)
EMAIL_HOST_USER = env_str("DBAAS_SMTP_USER", "")
EMAIL_HOST_PASSWORD = env_secret("DBAAS_SMTP_PASSWORD")
EMAIL_USE_TLS = env_bool("DBAAS_SMTP_TLS", True)
DEFAULT_FROM_EMAIL = env_str("DBAAS_MAIL_FROM", "dbaas <no-reply@localhost>")

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

# Redis: REDIS_URL, else the platform's own server on a unix socket that only
# the service account and root can reach (so it needs no password).
REDIS_SOCKET = SERVICES_DIR / "run" / "redis" / "redis.sock"
REDIS_URL = env_str(
    "REDIS_URL", f"redis+socket://{REDIS_SOCKET}?virtual_host={env_int('DBAAS_REDIS_DB', 0)}"
)

CELERY_BROKER_URL = REDIS_URL


def _redis_py_url(url: str) -> str:
    """Celery spells a unix-socket Redis `redis+socket://PATH?virtual_host=DB`;
    redis-py (Django's cache) spells it `unix://PATH?db=DB`."""
    if not url.startswith("redis+socket://"):
        return url
    path, _, query = url.removeprefix("redis+socket://").partition("?")
    db = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("virtual_host", "0")
    return f"unix://{path}?db={db}"


REDIS_PY_URL = _redis_py_url(REDIS_URL)
# Shared by every web worker: rate limits.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_PY_URL,
        "KEY_PREFIX": "dbaas",
    }
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "control"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SOFT_TIME_LIMIT = 120
CELERY_TASK_TIME_LIMIT = 180
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# A request that queues work answers 503 within a few seconds when Redis is down
# (tenants/dispatch.py), instead of retrying for long.
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 1,
}
# A task whose worker process died is queued again (tasks are idempotent).
CELERY_TASK_REJECT_ON_WORKER_LOST = True

# This machine as a tenant host: its name (and so its Celery queue
# "host.<name>"), the name clients use in connection strings, the pooler port.
DBAAS_HOST_NAME = env_str("DBAAS_HOST_NAME", socket.gethostname().split(".")[0])
DBAAS_PUBLIC_HOST = env_str("DBAAS_PUBLIC_HOST", "127.0.0.1")
# Who this host is to the control plane (`manage.py host_token NAME` makes it; without
# it the host reads <DBAAS_DATA_DIR>/host_token): tenants/host/identity.py.
DBAAS_HOST_TOKEN = env_secret("DBAAS_HOST_TOKEN")
DBAAS_PGBOUNCER_LISTEN = env_str("DBAAS_PGBOUNCER_LISTEN", "127.0.0.1")
# How many databases this host takes (it registers this as it starts); new ones go
# to the host with the most room.
DBAAS_HOST_CAPACITY = env_int("DBAAS_HOST_CAPACITY", 1000, minimum=1)
# Where each host serves its logical exports to the control plane's web server
# (TLS, signed URLs: tenants/host/exports.py), on its DBAAS_PGBOUNCER_LISTEN address.
DBAAS_EXPORTS_PORT = env_int("DBAAS_EXPORTS_PORT", 6430, minimum=1)
# After a database moves to another host (manage.py drain_host), the old host's
# pooler forwards its old connection string to the new one for this many days.
DBAAS_MOVE_FORWARD_DAYS = env_int("DBAAS_MOVE_FORWARD_DAYS", 30, minimum=0)
# `make run` with DBAAS_HOSTS=N > 1: N hosts on this machine, each in a network
# namespace of its own (dbaas/netns.py), beside the control plane.
DBAAS_HOSTS = env_int("DBAAS_HOSTS", 1, minimum=1)
# Which bridge and addresses (10.87.<slot>.0/24) those namespaces get: two platforms
# on one machine (a benchmark beside `make run`) need different ones.
DBAAS_NETNS_SLOT = env_int("DBAAS_NETNS_SLOT", 0, minimum=0)
DBAAS_PGBOUNCER_PORT = env_int("DBAAS_PGBOUNCER_PORT", 6432, minimum=1)
# How many PgBouncers a host runs, each for a share of its databases (tenant pk
# modulo this) on port DBAAS_PGBOUNCER_PORT + share: a PgBouncer's RELOAD, which
# stalls its clients, grows with the square of the databases it knows
# (docs/density.md). Part of every connection string: fixed for the host's life.
DBAAS_POOLER_SHARDS = env_int("DBAAS_POOLER_SHARDS", 8, minimum=1)
if DBAAS_PGBOUNCER_PORT <= DBAAS_EXPORTS_PORT < DBAAS_PGBOUNCER_PORT + DBAAS_POOLER_SHARDS:
    raise SystemExit(
        f"DBAAS_EXPORTS_PORT {DBAAS_EXPORTS_PORT} is one of the poolers' ports "
        f"(DBAAS_PGBOUNCER_PORT {DBAAS_PGBOUNCER_PORT} and the next {DBAAS_POOLER_SHARDS - 1})"
    )
DBAAS_PGBOUNCER_BIN = pgbouncer_binary()
# What connection strings ask of the client's TLS: verify-full checks the pooler's
# certificate and name against the platform's CA (GET /api/v1/ca.pem, which libpq
# reads from ~/.postgresql/root.crt). With an operator's certificate from a public
# CA: "sslmode=verify-full&sslrootcert=system" (libpq 16 and later).
DBAAS_CONNECTION_TLS = env_str("DBAAS_CONNECTION_TLS", "sslmode=verify-full")
# Connections one client address may hold open to the pooler at once (a host
# firewall rule, poolers/firewall.py); 0: no limit.
DBAAS_POOLER_CONNECTIONS_PER_ADDRESS = env_int("DBAAS_POOLER_CONNECTIONS_PER_ADDRESS", 1000)
# Seconds a client may take to log in to the pooler, waiting for its database to
# wake included: 200 sleeping databases connected to at once take ~10 s of CPU here.
DBAAS_POOLER_LOGIN_TIMEOUT = env_int("DBAAS_POOLER_LOGIN_TIMEOUT", 60, minimum=1)
# Failed logins at the pooler from one address within the window (seconds) that
# get it refused by the host firewall for DBAAS_POOLER_BAN_SECONDS (0: never).
DBAAS_POOLER_LOGIN_FAILURES_PER_ADDRESS = env_int("DBAAS_POOLER_LOGIN_FAILURES_PER_ADDRESS", 30)
DBAAS_POOLER_LOGIN_FAILURE_WINDOW = env_int("DBAAS_POOLER_LOGIN_FAILURE_WINDOW", 600)
DBAAS_POOLER_BAN_SECONDS = env_int("DBAAS_POOLER_BAN_SECONDS", 900)
# Addresses never banned (comma-separated), e.g. an operator's monitoring.
DBAAS_POOLER_LOGIN_GUARD_EXEMPT = [
    a for a in env_str("DBAAS_POOLER_LOGIN_GUARD_EXEMPT", "").split(",") if a
]
# /metrics names every tenant's database: staff sessions, or this bearer token.
DBAAS_METRICS_TOKEN = env_secret("DBAAS_METRICS_TOKEN")
DBAAS_RECONCILE_INTERVAL = env_int("DBAAS_RECONCILE_INTERVAL", 10, minimum=1)
# Each beat, a host reconciles every tenant in a passing state (provisioning,
# deleting, ...) and a slice of this many of its running and sleeping ones, a
# different slice each beat: at 10,000 a full sweep every 20 beats, not 10,000
# tenants looked at every 10 s (tenants/specs.py).
DBAAS_RECONCILE_SLICE = env_int("DBAAS_RECONCILE_SLICE", 500, minimum=1)
# Every host answers a heartbeat this often; one silent for DBAAS_HOST_DOWN_AFTER
# seconds is marked down (its databases shown unavailable) until it answers again.
DBAAS_HEARTBEAT_INTERVAL = env_float("DBAAS_HEARTBEAT_INTERVAL", 10.0, minimum=1.0)
DBAAS_HOST_DOWN_AFTER = env_float("DBAAS_HOST_DOWN_AFTER", 30.0, minimum=2.0)
# Seconds after a wake before the pooler replaces the server connections it opened
# through the activator by direct ones (see poolers/activator.py).
DBAAS_ACTIVATOR_HANDOFF_DELAY = env_float("DBAAS_ACTIVATOR_HANDOFF_DELAY", 5.0)
# The niceness of the host's periodic work (reconcile, idle check, usage walk) and
# of its bulk worker (backups): below what serves clients (tenants/host/priority.py).
DBAAS_BACKGROUND_NICENESS = env_int("DBAAS_BACKGROUND_NICENESS", 10)
# Instances the activator starts at once (the others wait in order): 4 per core.
DBAAS_WAKE_CONCURRENCY = env_int("DBAAS_WAKE_CONCURRENCY", 4 * (os.cpu_count() or 1))
# How long POST /databases waits for the instance before answering 202.
DBAAS_PROVISION_WAIT = env_int("DBAAS_PROVISION_WAIT", 30)
# Tenants run as uid base+id when the platform runs as root.
DBAAS_TENANT_UID_BASE = env_int("DBAAS_TENANT_UID_BASE", 200000)
# The runtime of databases whose plan names none.
DBAAS_RUNTIME = env_choice("DBAAS_RUNTIME", "sandbox", ("sandbox", "microvm"))
# How microVMs run (the runtime reads it itself: unikernel_images/runtimes/microvm.py).
DBAAS_MICROVM_ACCEL = env_choice("DBAAS_MICROVM_ACCEL", "auto", ("auto", "kvm", "tcg"))
# Disk set aside beside each instance and given back when the disk is full, so that
# its server can go on and its owner can connect to free space (0: none).
DBAAS_DISK_RESERVE_MB = env_int("DBAAS_DISK_RESERVE_MB", 32)
# Template copies each host keeps ready, so that provisioning is a rename.
DBAAS_SPARE_INSTANCES = env_int("DBAAS_SPARE_INSTANCES", 2)

# Scheduled backups: how often a changed tenant is backed up, and where to.
DBAAS_BACKUP_INTERVAL = env_int("DBAAS_BACKUP_INTERVAL", 86400)
DBAAS_BACKUP_STORE = env_str("DBAAS_BACKUP_STORE", "local")  # or "s3"
DBAAS_S3_ENDPOINT = env_str("DBAAS_S3_ENDPOINT", "")  # empty: AWS itself
DBAAS_S3_BUCKET = env_str("DBAAS_S3_BUCKET", "dbaas-backups")
DBAAS_S3_ACCESS_KEY = env_str("DBAAS_S3_ACCESS_KEY", "")
DBAAS_S3_SECRET_KEY = env_secret("DBAAS_S3_SECRET_KEY")
DBAAS_S3_REGION = env_str("DBAAS_S3_REGION", "us-east-1")

# Backups restored and pg_amcheck'ed per host and day.
DBAAS_VERIFY_SAMPLE = env_int("DBAAS_VERIFY_SAMPLE", 3)

CELERY_BEAT_SCHEDULE = {
    "verify-backups": {
        "task": "tenants.tasks.verify_backups_all_hosts",
        "schedule": 86400.0,
    },
    "schedule-backups": {
        "task": "tenants.tasks.schedule_backups",
        "schedule": env_float("DBAAS_BACKUP_CHECK_INTERVAL", 600.0, minimum=1.0),
    },
    "record-usage": {
        "task": "tenants.tasks.record_usage_all_hosts",
        "schedule": env_float("DBAAS_USAGE_INTERVAL", 60.0, minimum=1.0),
    },
    "heartbeats": {
        "task": "tenants.tasks.hosts_check_heartbeats",
        "schedule": DBAAS_HEARTBEAT_INTERVAL,
    },
    "reconcile-all-hosts": {
        "task": "tenants.tasks.reconcile_all_hosts",
        "schedule": float(DBAAS_RECONCILE_INTERVAL),
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("DBAAS_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

BASE_DIR = BASE_DIR
