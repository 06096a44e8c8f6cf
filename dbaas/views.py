"""Platform-level endpoints: health."""

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse


def redis_client() -> redis.Redis:
    """A redis-py client for REDIS_URL, which is written in kombu's syntax."""
    url = settings.REDIS_URL
    if url.startswith("redis+socket://"):
        path, _, query = url.removeprefix("redis+socket://").partition("?")
        db = int(query.partition("virtual_host=")[2].split("&")[0] or 0)
        return redis.Redis(unix_socket_path=path, db=db, socket_timeout=2)
    return redis.Redis.from_url(url, socket_timeout=2)


def healthz(request: HttpRequest) -> JsonResponse:
    from tenants.host_agent import pooler

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
    checks["pooler"] = "ok" if pooler().is_up() else "error: pgbouncer does not answer"
    healthy = all(v == "ok" for v in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unhealthy", "checks": checks},
        status=200 if healthy else 503,
    )


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
