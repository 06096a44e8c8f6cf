"""Hosts, plans, accounts, API tokens, tenants (one Postgres instance each) and events."""

import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from tenants.host.spec import (
    database_name_of,
    instance_id_of,
    major_of,
    postgres_setting_errors,
)
from unikernel_images.runtimes import RUNTIMES

RUNTIME_CHOICES = [(kind, kind) for kind in RUNTIMES]


class Host(models.Model):
    """A machine that runs tenant instances behind its own PgBouncer."""

    name = models.SlugField(max_length=63, unique=True)
    public_host = models.CharField(
        max_length=255, help_text="Host name clients put in connection strings."
    )
    pooler_port = models.PositiveIntegerField(default=6432)
    # The host runs this many PgBouncers, on pooler_port and the ports after it,
    # each for the tenants whose pk modulo this is its share (tenants/host/agent.py).
    pooler_shards = models.PositiveIntegerField(default=1)
    max_tenants = models.PositiveIntegerField(default=1000)
    accepting = models.BooleanField(default=True, help_text="New databases may be placed here.")
    created_at = models.DateTimeField(auto_now_add=True)
    # Capacity, as the host's agent last measured it (tenants.usage).
    memory_total_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    memory_used_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    disk_total_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    disk_used_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    pooler_clients = models.PositiveIntegerField(null=True, blank=True)
    pooler_servers = models.PositiveIntegerField(null=True, blank=True)
    usage_at = models.DateTimeField(null=True, blank=True)
    # Liveness, from the host's own heartbeats (tenants.tasks.heartbeat_received):
    # the last one, what the host reported of its parts, and since when it has been
    # silent for longer than DBAAS_HOST_DOWN_AFTER (null while it answers).
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    health = models.JSONField(default=dict, blank=True)
    down_since = models.DateTimeField(null=True, blank=True)
    # The host token's generation (tenants/host_identity.py): `host_token NAME --rotate`
    # counts it up, and the tokens of earlier generations stop working.
    token_generation = models.PositiveIntegerField(default=1)

    # What its agent measures (tenants/host/usage.py reports them).
    USAGE_FIELDS = (
        "memory_total_bytes",
        "memory_used_bytes",
        "disk_total_bytes",
        "disk_used_bytes",
        "pooler_clients",
        "pooler_servers",
    )

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def heard_from_since(since) -> Q:
        """Hosts with a sign of life since `since`: a heartbeat (registering counts as
        one), or, never having sent one, their creation."""
        return Q(heartbeat_at__gte=since) | Q(heartbeat_at__isnull=True, created_at__gte=since)

    @property
    def down_reason(self) -> str:
        """Why its databases cannot be reached now ("" while the host answers)."""
        if self.down_since is None:
            return ""
        return f"its host {self.name} has not answered since {self.down_since:%Y-%m-%d %H:%M} UTC"

    def pooler_port_for(self, tenant_pk: int) -> int:
        """The port of the host's PgBouncer that has the tenant."""
        return self.pooler_port + tenant_pk % max(1, self.pooler_shards)

    @property
    def queue(self) -> str:
        from dbaas.celery import host_queue

        return host_queue(self.name)

    @property
    def bulk_queue(self) -> str:
        from dbaas.celery import host_bulk_queue

        return host_bulk_queue(self.name)


# Extensions a database owner may create unless the plan says otherwise: those the
# images carry for tenants (unikernel_images.image.EXTENSIONS).
DEFAULT_EXTENSIONS = (
    "btree_gin btree_gist citext fuzzystrmatch hstore intarray ltree pg_trgm pgcrypto "
    "postgis tablefunc unaccent uuid-ossp vector"
)


EXTENSION_NAME = re.compile(r"[a-z0-9_-]{1,63}")


class Plan(models.Model):
    # The free plan's servers (migration 0019 gives it these): measured for memory
    # per awake idle server, bench/instances.py and docs/benchmarks.md.
    FREE_POSTGRES_SETTINGS = {
        "shared_buffers": "1MB",
        "wal_buffers": "64kB",
        "max_locks_per_transaction": "32",
        "max_pred_locks_per_transaction": "32",
        "max_files_per_process": "100",
        "autovacuum_max_workers": "1",
        "autovacuum_naptime": "5min",
    }

    name = models.SlugField(max_length=40, unique=True)
    max_databases = models.PositiveIntegerField(default=3)
    storage_limit_mb = models.PositiveIntegerField(default=512)
    connection_limit = models.PositiveIntegerField(
        default=20,
        help_text="Session-mode client connections per database at once; the next one "
        "is refused by the pooler.",
    )
    pool_size = models.PositiveIntegerField(
        default=10,
        help_text="Server connections shared by the transaction-mode (_pooled) clients "
        "of a database.",
    )
    backups_kept = models.PositiveIntegerField(
        default=7, help_text="Daily backups kept per database; older ones are deleted."
    )
    sleeps_when_idle = models.BooleanField(default=True)
    idle_timeout_seconds = models.PositiveIntegerField(default=300)
    is_default = models.BooleanField(default=False, help_text="Given to new accounts.")
    memory_limit_mb = models.PositiveIntegerField(
        default=512, help_text="Memory of a database's server, all its processes together."
    )
    cpu_limit = models.FloatField(
        default=1.0, help_text="CPUs' worth of time a database's server may use (0.5: half)."
    )
    process_limit = models.PositiveIntegerField(
        default=100, help_text="Processes of a database's server (connections use one each)."
    )
    temp_file_limit_mb = models.IntegerField(
        default=1024, help_text="Temporary files one session may write (-1: no limit)."
    )
    work_mem_max_mb = models.PositiveIntegerField(
        default=64, help_text="Ceiling of work_mem and maintenance_work_mem (0: none)."
    )
    databases_per_server = models.PositiveIntegerField(
        default=10,
        help_text="Databases an owner may have on its server (CREATE DATABASE), the "
        "one the platform made included.",
    )
    extensions = models.CharField(
        max_length=1000,
        default=DEFAULT_EXTENSIONS,
        blank=True,
        help_text="Extensions an owner may CREATE, separated by spaces (of those the "
        "image has; applied when an instance starts).",
    )

    runtime = models.CharField(
        max_length=20,
        blank=True,
        choices=[("", "the host's default (DBAAS_RUNTIME)"), *RUNTIME_CHOICES],
        default="",
        help_text="How its databases' servers run: sandbox (namespaces), microvm (a QEMU "
        "microVM each: a hardware boundary). Applies to databases created after a change.",
    )
    postgres_settings = models.JSONField(
        default=dict,
        blank=True,
        help_text='PostgreSQL settings of the plan\'s servers, e.g. {"shared_buffers": '
        '"2MB"} (of those tenants.host.spec.POSTGRES_SETTINGS names); applied when a '
        "server starts.",
    )

    def __str__(self) -> str:
        return self.name

    @property
    def extension_list(self) -> list[str]:
        """The names, each a plain identifier (they go into the instance's config)."""
        names = self.extensions.replace(",", " ").split()
        return sorted({n for n in names if EXTENSION_NAME.fullmatch(n)})

    def clean(self) -> None:
        bad = [
            n for n in self.extensions.replace(",", " ").split() if not EXTENSION_NAME.fullmatch(n)
        ]
        if bad:
            raise ValidationError({"extensions": f"not extension names: {', '.join(bad)}"})
        if not isinstance(self.postgres_settings, dict):
            raise ValidationError({"postgres_settings": "an object of setting names and values"})
        if errors := postgres_setting_errors(self.postgres_settings):
            raise ValidationError({"postgres_settings": errors})

    @property
    def storage_limit_bytes(self) -> int:
        """Per database; the MB of storage_limit_mb are MiB."""
        return self.storage_limit_mb * 1024 * 1024


class Account(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="account"
    )
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="accounts")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.user.email


class ApiToken(models.Model):
    """A bearer token; only its SHA-256 is stored."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="tokens")
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12, help_text="First characters, to recognise it.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.account})"


class Tenant(models.Model):
    """One tenant database: its own Postgres instance with one database and one owner role."""

    class State(models.TextChoices):
        PROVISIONING = "provisioning"
        RUNNING = "running"
        SLEEPING = "sleeping"
        DELETING = "deleting"
        DELETED = "deleted"
        FAILED = "failed"
        # By an operator: connections refused, instance stopped, data kept.
        SUSPENDED = "suspended"
        # Being moved to another host (tenants/moves.py): its clients wait meanwhile.
        MOVING = "moving"

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="tenants")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="tenants")
    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="tenants")
    name = models.CharField(max_length=40)
    # Host-unique suffix: pooler entries and auth-file users are one table per host.
    slug = models.CharField(max_length=12, unique=True)
    runtime = models.CharField(max_length=20, default="sandbox")
    # postgres-<major>: the newest this host had when the database was made.
    image = models.CharField(max_length=40)
    state = models.CharField(
        max_length=20, choices=State.choices, default=State.PROVISIONING, db_index=True
    )
    state_reason = models.TextField(blank=True)
    state_changed_at = models.DateTimeField(auto_now_add=True)
    # The SCRAM secret of the owner role, as written to postgres and PgBouncer.
    scram_secret = models.TextField()
    # A new secret waiting to be applied on the host (password reset).
    pending_scram_secret = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_active_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    # Scale to zero: how often and how fast it woke, and the pooler's transaction
    # counter at the last idle check (a change means activity).
    wake_count = models.PositiveIntegerField(default=0)
    wake_ms_total = models.PositiveBigIntegerField(default=0)
    last_wake_ms = models.PositiveIntegerField(null=True, blank=True)
    pooler_xact_count = models.BigIntegerField(default=0)
    # The number of the last change of state its host reported (tenants/reports.py):
    # an older report arriving late is not applied.
    host_seq = models.BigIntegerField(default=0)
    # Disk used by the instance's data, measured by its host every usage interval.
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    # Over the plan's storage limit, new transactions default to read-only (as
    # Supabase does); None: not known yet for this data (new from a backup).
    storage_read_only = models.BooleanField(null=True, blank=True)
    # Set when the tenant is made from a backup instead of the image's template.
    restored_from = models.ForeignKey(
        "Backup", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["account", "name"],
                condition=~Q(state="deleted"),
                name="tenant_name_unique_per_account",
            ),
        ]
        indexes = [models.Index(fields=["host", "state"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"

    @property
    def database_name(self) -> str:
        """The database and role name: unique per host, shown in connection strings
        (named as the host names it: tenants/host/spec.py)."""
        return database_name_of(self.name, self.slug)

    @property
    def pooler_port(self) -> int:
        """Where clients reach it: the port of its host's PgBouncer that has it."""
        return self.host.pooler_port_for(self.pk)

    @property
    def pooled_database_name(self) -> str:
        """The transaction-mode alias in the pooler, for serverless clients."""
        return f"{self.database_name}_pooled"

    @property
    def role_name(self) -> str:
        return self.database_name

    @property
    def major(self) -> str:
        """The PostgreSQL major the database runs, e.g. "17"."""
        return major_of(self.image)

    @property
    def instance_id(self) -> str:
        return instance_id_of(self.pk)


class TenantDatabase(models.Model):
    """A database the tenant made on its own server with CREATE DATABASE, routed by
    its host's pooler like the one the platform made (see tenants/host/databases.py).

    Names are one namespace per host in the pooler; kept unique platform-wide here.
    """

    class State(models.TextChoices):
        RESERVED = "reserved"  # CREATE DATABASE is running
        ACTIVE = "active"  # routed

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="databases")
    name = models.CharField(max_length=63, unique=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.RESERVED)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.tenant})"


class Event(models.Model):
    """One row per state change or operator-visible action."""

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, null=True, blank=True, related_name="events"
    )
    host = models.ForeignKey(Host, on_delete=models.SET_NULL, null=True, blank=True)
    action = models.CharField(max_length=40)
    from_state = models.CharField(max_length=20, blank=True)
    to_state = models.CharField(max_length=20, blank=True)
    message = models.TextField(blank=True)
    actor = models.CharField(max_length=254, default="system")
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action} {self.message}"


class Move(models.Model):
    """A tenant moved from one host to another (tenants/moves.py, tenants/host/moves.py).

    While it runs it says which step it is at; once done, the source host's pooler
    forwards the tenant's old connection string to the target until `forward_until`.
    """

    class State(models.TextChoices):
        PAUSING = "pausing"  # the source holds new clients and stops the instance
        COPYING = "copying"  # the target fetches its data and backups from the source
        FINISHING = "finishing"  # running on the target; the source cleans up
        DONE = "done"
        FAILED = "failed"  # back on the source as it was

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="moves")
    source = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="moves_out")
    target = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="moves_in")
    # The tenant's state before the move, which it gets back after (or on failure).
    from_state = models.CharField(max_length=20)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PAUSING)
    error = models.TextField(blank=True)
    # The instance's data as the source packed it, in the source's local store.
    archive_location = models.CharField(max_length=500, blank=True)
    archive_sha256 = models.CharField(max_length=64, blank=True)
    archive_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    requested_by = models.CharField(max_length=254, default="system")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When the source began holding the tenant's clients, and for how long it did.
    paused_at = models.DateTimeField(null=True, blank=True)
    pause_ms = models.PositiveIntegerField(null=True, blank=True)
    forward_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # One move of a tenant at a time.
            models.UniqueConstraint(
                fields=["tenant"],
                condition=Q(state__in=["pausing", "copying", "finishing"]),
                name="move_one_at_a_time",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant} {self.source} -> {self.target} ({self.state})"


class Backup(models.Model):
    """One physical backup of a tenant's instance, compressed with zstd."""

    class Kind(models.TextChoices):
        BASE = "base", "online base backup"
        COLD = "cold", "copy of a sleeping instance"
        LOGICAL = "logical", "pg_dump export, for download"

    class State(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        EXPIRED = "expired"  # past the plan's retention: deleted from the store

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="backups")
    kind = models.CharField(max_length=10, choices=Kind.choices, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    store = models.CharField(max_length=20, default="local")
    location = models.CharField(max_length=500, blank=True)
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    compressed_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    requested_by = models.CharField(max_length=254, default="system")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # The periodic verification: restored into a scratch instance and pg_amcheck'ed.
    verified_at = models.DateTimeField(null=True, blank=True)
    verified_ok = models.BooleanField(null=True)
    verify_message = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"backup {self.pk} of {self.tenant} ({self.state})"


class Restore(models.Model):
    """Restoring a backup into its tenant, in place."""

    class State(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    backup = models.ForeignKey(Backup, on_delete=models.PROTECT, related_name="restores")
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="restores")
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    progress = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    requested_by = models.CharField(max_length=254, default="system")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"restore {self.pk} of backup {self.backup_id} ({self.state})"
