"""Platform-level endpoints: health and (for operators) metrics."""

import hmac

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_PY_URL, socket_timeout=2)


def health_checks() -> dict[str, str]:
    """What GET /healthz reports (tenants/api/meta.py): the control plane's own
    dependencies, `ok` or why not. Hosts report their health in their heartbeats
    (the admin shows it); a host that is down does not make the control plane so."""
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
        checks["controlplane"] = "ok"
    except Exception as exc:
        checks["controlplane"] = f"error: {exc}"
    try:
        redis_client().ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {exc}"
    return checks


def not_found(request: HttpRequest, exception: Exception | None = None):
    if request.path.startswith("/api/"):
        return JsonResponse({"error": "not found"}, status=404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def server_error(request: HttpRequest):
    if request.path.startswith("/api/"):
        return JsonResponse({"error": "internal error"}, status=500)
    from django.views.defaults import server_error as default

    return default(request)


def metrics_allowed(request: HttpRequest) -> bool:
    """Operators only: a staff user's session, or DBAAS_METRICS_TOKEN as a bearer
    token (for a Prometheus server). The series name every tenant's database."""
    if request.user.is_authenticated and request.user.is_staff:
        return True
    token = settings.DBAAS_METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given, token)


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition: tenants by state, and per tenant its wakes."""
    from django.db.models import Count

    if not metrics_allowed(request):
        response = HttpResponse(
            "metrics are for operators: log in as staff, or send DBAAS_METRICS_TOKEN as a "
            "bearer token\n",
            status=401,
            content_type="text/plain",
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response

    from tenants.models import Tenant

    lines = [
        "# HELP dbaas_tenants Tenants by host and state.",
        "# TYPE dbaas_tenants gauge",
    ]
    by_state = (
        Tenant.objects.exclude(state=Tenant.State.DELETED)
        .values("host__name", "state")
        .annotate(n=Count("id"))
        .order_by("host__name", "state")
    )
    for row in by_state:
        lines.append(
            f'dbaas_tenants{{host="{row["host__name"]}",state="{row["state"]}"}} {row["n"]}'
        )
    tenants = (
        Tenant.objects.exclude(state=Tenant.State.DELETED).select_related("host").order_by("id")
    )
    series = {
        "dbaas_tenant_wakes_total": ("counter", "Times the tenant was woken from sleep."),
        "dbaas_tenant_wake_seconds_sum": ("counter", "Total time spent waking the tenant."),
        "dbaas_tenant_last_wake_seconds": ("gauge", "Duration of the tenant's last wake."),
        "dbaas_tenant_asleep": ("gauge", "1 if the tenant is sleeping."),
    }
    values: dict[str, list[str]] = {name: [] for name in series}
    for t in tenants:
        labels = f'tenant="{t.database_name}",host="{t.host.name}"'
        values["dbaas_tenant_wakes_total"].append(f"{{{labels}}} {t.wake_count}")
        values["dbaas_tenant_wake_seconds_sum"].append(f"{{{labels}}} {t.wake_ms_total / 1000:.3f}")
        if t.last_wake_ms is not None:
            values["dbaas_tenant_last_wake_seconds"].append(
                f"{{{labels}}} {t.last_wake_ms / 1000:.3f}"
            )
        asleep = int(t.state == Tenant.State.SLEEPING)
        values["dbaas_tenant_asleep"].append(f"{{{labels}}} {asleep}")
    for name, (kind, help_text) in series.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{sample}" for sample in values[name]]
    return HttpResponse("\n".join(lines) + "\n", content_type="text/plain; version=0.0.4")
