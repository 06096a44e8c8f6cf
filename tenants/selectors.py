"""Reads: what the API, the web pages and the host agent look up."""

import hashlib
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from dbaas.env import pki_dir
from poolers import tls
from tenants.errors import NotFound
from tenants.models import Account, ApiToken, Host, Tenant

VISIBLE = ~Q(state=Tenant.State.DELETED)
VISIBLE_TENANT = ~Q(tenants__state=Tenant.State.DELETED)


def account_for_token(raw_token: str) -> Account | None:
    key_hash = hashlib.sha256(raw_token.encode()).hexdigest()
    token = (
        ApiToken.objects.select_related("account__user", "account__plan")
        .filter(key_hash=key_hash)
        .first()
    )
    if token is None or not token.account.user.is_active:
        return None
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token.account


def tenant_list(*, account: Account) -> QuerySet[Tenant]:
    return (
        Tenant.objects.filter(VISIBLE, account=account)
        .select_related("host", "plan")
        .order_by("created_at", "id")
    )


def tenant_get(*, account: Account, tenant_id: int | str) -> Tenant:
    """Another account's tenant is indistinguishable from a missing one."""
    try:
        return tenant_list(account=account).get(pk=int(tenant_id))
    except (Tenant.DoesNotExist, ValueError):
        raise NotFound(f"database {tenant_id} not found") from None


def host_pick(exclude: Host | None = None) -> Host | None:
    """The accepting host with the most room left, among those alive: not marked
    down, and heard from (a heartbeat, or its registration as it started) within
    DBAAS_HOST_DOWN_AFTER, so that a host that stopped gets no new databases even
    before the next beat marks it down."""
    heard_since = timezone.now() - timedelta(seconds=settings.DBAAS_HOST_DOWN_AFTER)
    hosts = (
        Host.objects.filter(accepting=True, down_since__isnull=True)
        .filter(Host.heard_from_since(heard_since))
        .annotate(live=Count("tenants", filter=~Q(tenants__state=Tenant.State.DELETED)))
        .order_by("live", "name")
    )
    if exclude is not None:
        hosts = hosts.exclude(pk=exclude.pk)
    for host in hosts:
        if host.live < host.max_tenants:
            return host
    return None


def host_capacity() -> list[Host]:
    """Every host with its tenants counted by state (`running`, `sleeping`, ...,
    `total`) and the capacity its agent last measured."""
    states = [
        Tenant.State.RUNNING,
        Tenant.State.SLEEPING,
        Tenant.State.SUSPENDED,
        Tenant.State.FAILED,
    ]
    counts = {state: Count("tenants", filter=Q(tenants__state=state)) for state in states}
    return list(
        Host.objects.annotate(**counts, total=Count("tenants", filter=VISIBLE_TENANT)).order_by(
            "name"
        )
    )


def account_usage(account: Account) -> dict:
    """What the dashboard shows against the plan: databases and storage."""
    tenants = list(tenant_list(account=account))
    used = sum(t.size_bytes or 0 for t in tenants)
    # The plan's limit is per database; the account's allowance is all of them.
    per_database = account.plan.storage_limit_bytes
    limit = per_database * account.plan.max_databases
    return {
        "databases": len(tenants),
        "max_databases": account.plan.max_databases,
        "storage_used_bytes": used,
        "storage_limit_bytes": limit,
        "storage_per_database_bytes": per_database,
        "storage_percent": min(100, round(100 * used / limit)) if limit else 0,
    }


def connection_string(tenant: Tenant, password: str, pooled: bool = False) -> str:
    """The direct (session-mode) string, or the transaction-mode ("pooled") one. It
    asks the client to check the pooler's certificate (DBAAS_CONNECTION_TLS)."""
    database = tenant.pooled_database_name if pooled else tenant.database_name
    return (
        f"postgresql://{tenant.role_name}:{password}@{tenant.host.public_host}:"
        f"{tenant.pooler_port}/{database}?{settings.DBAAS_CONNECTION_TLS}"
    )


def credentials_json(tenant: Tenant, password: str) -> dict:
    return {
        "password": password,
        "connection_string": connection_string(tenant, password),
        "pooled_connection_string": connection_string(tenant, password, pooled=True),
    }


def tls_ca_pem() -> str:
    """The platform's CA certificate, which signs its hosts' pooler certificates."""
    cert, _key = tls.ensure_ca(pki_dir())
    return cert.read_text()
