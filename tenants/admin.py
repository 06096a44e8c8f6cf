"""The operators' console: hosts, plans, accounts, tenants and their events."""

import functools

from django.contrib import admin, messages

from dbaas.units import human_bytes
from tenants import services
from tenants.errors import ServiceError
from tenants.models import (
    Account,
    ApiToken,
    Backup,
    Event,
    Host,
    Move,
    Plan,
    Restore,
    Tenant,
)


@admin.action(description="Drain (move every database to other hosts)")
def drain_hosts(modeladmin, request, queryset):
    from tenants.tasks import host_drain

    actor = f"admin:{request.user.get_username()}"
    for host in queryset:
        host_drain.apply_async((host.pk, actor))
    names = ", ".join(h.name for h in queryset)
    modeladmin.message_user(
        request,
        f"Draining {names}: no new databases go there, and each one is moved off in "
        "turn. Progress is in Moves and in the events.",
        messages.SUCCESS,
    )


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    actions = [drain_hosts]
    list_display = (
        "name",
        "status",
        "public_host",
        "pooler_port",
        "accepting",
        "max_tenants",
        "heartbeat_at",
        "usage_at",
    )
    readonly_fields = (
        "heartbeat_at",
        "health",
        "down_since",
        *Host.USAGE_FIELDS,
        "usage_at",
    )
    list_filter = ("accepting",)
    search_fields = ("name", "public_host")

    @admin.display(description="status")
    def status(self, host: Host) -> str:
        """From its heartbeats: up (with any part that reports an error), or down."""
        if host.down_since is not None:
            return f"down since {host.down_since:%Y-%m-%d %H:%M:%S}"
        if host.heartbeat_at is None:
            return "no heartbeat yet"
        errors = [f"{part}: {text}" for part, text in host.health.items() if text != "ok"]
        return "up" + (f" ({'; '.join(errors)})" if errors else "")


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "max_databases",
        "storage_limit_mb",
        "connection_limit",
        "pool_size",
        "sleeps_when_idle",
        "idle_timeout_seconds",
        "runtime",
        "is_default",
    )
    list_editable = ("max_databases", "storage_limit_mb", "connection_limit", "pool_size")


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ("user", "plan", "created_at")
    list_filter = ("plan",)
    search_fields = ("user__email",)
    raw_id_fields = ("user",)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "account", "created_at", "last_used_at")
    search_fields = ("account__user__email", "prefix")
    readonly_fields = ("account", "key_hash", "prefix", "created_at", "last_used_at")


class EventInline(admin.TabularInline):
    model = Event
    extra = 0
    can_delete = False
    fields = ("created_at", "action", "from_state", "to_state", "actor", "duration_ms", "message")
    readonly_fields = fields
    ordering = ("-created_at", "-id")

    def has_add_permission(self, request, obj=None):
        return False


@admin.action(description="Put to sleep")
def sleep_tenants(modeladmin, request, queryset):
    _run_action(modeladmin, request, queryset, services.tenant_sleep, "sleep")


@admin.action(description="Wake up")
def wake_tenants(modeladmin, request, queryset):
    _run_action(modeladmin, request, queryset, services.tenant_wake, "wake")


def _run_action(modeladmin, request, queryset, service, verb: str) -> None:
    queued, refused = 0, []
    for tenant in queryset.select_related("host"):
        try:
            service(tenant=tenant, actor=f"admin:{request.user.get_username()}")
            queued += 1
        except ServiceError as exc:
            refused.append(f"{tenant}: {exc.message}")
    if queued:
        modeladmin.message_user(request, f"{verb}: queued for {queued} tenant(s).")
    for line in refused:
        modeladmin.message_user(request, line, level=messages.WARNING)


@admin.action(description="Back up now")
def back_up_tenants(modeladmin, request, queryset):
    from tenants.backups import backup_request

    # Operators are not held to the owners' limit of unfinished backups.
    request_by_operator = functools.partial(backup_request, account_limit=False)
    _run_action(modeladmin, request, queryset, request_by_operator, "back up")


@admin.action(description="Restart")
def restart_tenants(modeladmin, request, queryset):
    _run_action(modeladmin, request, queryset, services.tenant_restart, "restart")


@admin.action(description="Suspend (refuse connections, keep data)")
def suspend_tenants(modeladmin, request, queryset):
    _run_action(modeladmin, request, queryset, services.tenant_suspend, "suspend")


@admin.action(description="Unsuspend")
def unsuspend_tenants(modeladmin, request, queryset):
    _run_action(modeladmin, request, queryset, services.tenant_unsuspend, "unsuspend")


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    actions = [
        restart_tenants,
        sleep_tenants,
        wake_tenants,
        back_up_tenants,
        suspend_tenants,
        unsuspend_tenants,
    ]
    list_display = (
        "name",
        "database_name",
        "account",
        "state",
        "plan",
        "runtime",
        "host",
        "size",
        "created_at",
        "last_active_at",
        "wake_count",
        "last_wake_ms",
    )
    list_filter = ("state", "plan", "runtime", "host")
    search_fields = ("name", "slug", "account__user__email")
    list_select_related = ("account__user", "plan", "host")
    readonly_fields = (
        "slug",
        "database_name",
        "state",
        "state_reason",
        "state_changed_at",
        "created_at",
        "deleted_at",
        "last_active_at",
        "runtime",
        "image",
        "wake_count",
        "wake_ms_total",
        "last_wake_ms",
        "pooler_xact_count",
        "size_bytes",
    )
    exclude = ("scram_secret", "pending_scram_secret")
    inlines = [EventInline]

    @admin.display(description="size", ordering="size_bytes")
    def size(self, tenant: Tenant) -> str:
        return human_bytes(tenant.size_bytes)


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "tenant",
        "host",
        "action",
        "from_state",
        "to_state",
        "actor",
        "duration_ms",
        "message",
    )
    list_filter = ("action", "to_state", "host")
    search_fields = ("tenant__name", "tenant__slug", "message", "actor")
    list_select_related = ("tenant", "host")

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Backup)
class BackupAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "tenant",
        "kind",
        "state",
        "size_bytes",
        "compressed_bytes",
        "store",
        "created_at",
        "finished_at",
        "verified_ok",
    )
    list_filter = ("state", "kind", "store", "verified_ok")
    search_fields = ("tenant__name", "tenant__slug", "sha256")
    list_select_related = ("tenant",)
    readonly_fields = [f.name for f in Backup._meta.fields]


@admin.register(Restore)
class RestoreAdmin(admin.ModelAdmin):
    list_display = ("id", "tenant", "backup", "state", "progress", "created_at", "finished_at")
    list_filter = ("state",)
    readonly_fields = [f.name for f in Restore._meta.fields]


@admin.register(Move)
class MoveAdmin(admin.ModelAdmin):
    """Databases moved between hosts (drains): read-only, the hosts write them."""

    list_display = (
        "tenant",
        "source",
        "target",
        "from_state",
        "state",
        "pause_ms",
        "created_at",
        "forward_until",
    )
    list_filter = ("state", "source", "target")
    search_fields = ("tenant__name", "tenant__slug")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
