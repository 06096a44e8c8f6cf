"""The REST API, v1: JSON in, JSON out, bearer-token auth, errors as {"error": "..."}."""

import functools
import json
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from tenants import backups, downloads, openapi, ratelimit, selectors, services
from tenants.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidInput,
    NotFound,
    ServiceError,
    Unavailable,
)
from tenants.models import Account, Backup, Restore, Tenant
from tenants.selectors import tls_ca_pem


class ApiRequest(HttpRequest):
    """A request as the views see it once `endpoint` has run: the account its token
    names (views with auth), and its JSON body (a dict, {} when there is none)."""

    account: Account
    json: dict


def error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def endpoint(*methods: str, auth: bool = True) -> Callable:
    """Method check, JSON body parsing, token auth and domain errors for one view."""

    def decorate(view: Callable) -> Callable:
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: ApiRequest, *args, **kwargs) -> JsonResponse:
            if request.method not in methods:
                response = error(405, f"method {request.method} not allowed")
                response["Allow"] = ", ".join(methods)
                return response
            try:
                if auth:
                    request.account = _authenticate(request)
                request.json = _body(request)
                return view(request, *args, **kwargs)
            except ServiceError as exc:
                return error(exc.status, exc.message)

        return wrapper

    return decorate


def _bearer_token(request: ApiRequest) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("missing bearer token (Authorization: Bearer <token>)")
    return token.strip()


def _authenticate(request: ApiRequest):
    account = selectors.account_for_token(_bearer_token(request))
    if account is None:
        raise AuthenticationFailed("invalid token")
    return account


def _body(request: ApiRequest) -> dict:
    if request.method in ("GET", "DELETE", "HEAD") or not request.body:
        return {}
    try:
        body = json.loads(request.body)
        # Lone surrogates ("\ud800") parse, but no UTF-8 encoder (the database's, the
        # password hasher's) takes them; nesting too deep for Python is refused too.
        json.dumps(body, ensure_ascii=False).encode()
    except (ValueError, UnicodeError, RecursionError):
        raise InvalidInput("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    return body


def _string_field(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"field {name!r} is required and must be a string")
    return value


def database_json(tenant: Tenant) -> dict:
    return {
        "id": tenant.pk,
        "name": tenant.name,
        "state": tenant.state,
        "state_reason": tenant.state_reason,
        "host": tenant.host.public_host,
        "port": tenant.host.pooler_port,
        "database": tenant.database_name,
        "user": tenant.role_name,
        "plan": tenant.plan.name,
        "postgres_version": tenant.major,
        "created_at": tenant.created_at.isoformat(),
        "last_active_at": tenant.last_active_at.isoformat() if tenant.last_active_at else None,
        "wake_count": tenant.wake_count,
        "size_bytes": tenant.size_bytes,
        "read_only": tenant.storage_read_only is True,
    }


def _actor(request: ApiRequest) -> str:
    return f"api:{request.account.user.email}"


# -- accounts ----------------------------------------------------------------------


@never_cache  # the answer can hold a password or a token
@endpoint("POST", auth=False)
def accounts(request: ApiRequest) -> JsonResponse:
    ratelimit.check_signup(request)
    account, token = services.account_create(
        email=_string_field(request.json, "email"), password=_string_field(request.json, "password")
    )
    return JsonResponse({"email": account.user.email, "token": token}, status=201)


@never_cache  # the answer can hold a password or a token
@endpoint("POST", auth=False)
def tokens(request: ApiRequest) -> JsonResponse:
    body = request.json
    email, password = body.get("email"), body.get("password")
    # No account's email holds a NUL, and PostgreSQL refuses one even in a query.
    if not isinstance(email, str) or not isinstance(password, str) or "\x00" in email:
        raise AuthenticationFailed("invalid email or password")
    ratelimit.check_login(request, email)
    try:
        token = services.token_create(email=email, password=password)
    except AuthenticationFailed:
        ratelimit.login_failed(request, email)
        raise
    return JsonResponse({"token": token})


@endpoint("DELETE")
def token_current(request: ApiRequest) -> JsonResponse:
    """Revoke the token this request presents."""
    services.token_revoke(raw_token=_bearer_token(request))
    return JsonResponse({"revoked": True})


# -- databases -----------------------------------------------------------------------


@never_cache  # the answer can hold a password or a token
@endpoint("GET", "POST")
def databases(request: ApiRequest) -> JsonResponse:
    if request.method == "GET":
        items = [database_json(t) for t in selectors.tenant_list(account=request.account)]
        return JsonResponse({"databases": items})
    name = request.json.get("name")
    if not isinstance(name, str):
        raise InvalidInput("field 'name' is required and must be a string")
    return _create_and_wait(request, name)


def _create_and_wait(request: ApiRequest, name: str, restored_from=None) -> JsonResponse:
    # The connection string must work the moment the client reads it: this waits
    # for the host agent (tens of milliseconds normally).
    tenant, password = services.tenant_create_ready(
        account=request.account, name=name, actor=_actor(request), restored_from=restored_from
    )
    if tenant.state == Tenant.State.FAILED:
        return JsonResponse(
            {
                "error": f"the database could not be created: {tenant.state_reason}",
                "database": database_json(tenant),
            },
            status=500,
        )
    body = database_json(tenant) | selectors.credentials_json(tenant, password)
    # Still provisioning after the wait: accepted; the string works once running.
    return JsonResponse(body, status=201 if tenant.state == Tenant.State.RUNNING else 202)


@endpoint("GET", "DELETE")
def database(request: ApiRequest, tenant_id: str) -> JsonResponse:
    tenant = selectors.tenant_get(account=request.account, tenant_id=tenant_id)
    if request.method == "GET":
        return JsonResponse(database_json(tenant))
    purge = request.GET.get("purge", "false").lower()
    if purge not in ("true", "false", "1", "0"):
        raise InvalidInput("purge must be true or false")
    services.tenant_delete(tenant=tenant, actor=_actor(request))
    backups.backups_on_delete(tenant=tenant, purge=purge in ("true", "1"))
    tenant.refresh_from_db()
    return JsonResponse(database_json(tenant), status=202)


@never_cache  # the answer can hold a password or a token
@endpoint("POST")
def database_password(request: ApiRequest, tenant_id: str) -> JsonResponse:
    tenant = selectors.tenant_get(account=request.account, tenant_id=tenant_id)
    tenant, password = services.tenant_reset_password_applied(tenant=tenant, actor=_actor(request))
    return JsonResponse(database_json(tenant) | selectors.credentials_json(tenant, password))


@endpoint("POST")
def database_sleep(request: ApiRequest, tenant_id: str) -> JsonResponse:
    tenant = selectors.tenant_get(account=request.account, tenant_id=tenant_id)
    tenant = services.tenant_sleep_settled(tenant=tenant, actor=_actor(request))
    if tenant.state == Tenant.State.RUNNING:
        raise Conflict(
            "the database is in use (a client is connected, or it is waking); it stays awake"
        )
    return JsonResponse(database_json(tenant))


@endpoint("POST")
def database_wake(request: ApiRequest, tenant_id: str) -> JsonResponse:
    tenant = selectors.tenant_get(account=request.account, tenant_id=tenant_id)
    tenant = services.tenant_wake_settled(tenant=tenant, actor=_actor(request))
    if tenant.state != Tenant.State.RUNNING:
        raise Unavailable("the database did not wake up in time; try again")
    return JsonResponse(database_json(tenant))


# -- backups -------------------------------------------------------------------------


def backup_json(backup: Backup) -> dict:
    def iso(value):
        return value.isoformat() if value else None

    return {
        "id": backup.pk,
        "database_id": backup.tenant_id,
        "kind": backup.kind or None,
        "state": backup.state,
        "size_bytes": backup.size_bytes,
        "compressed_bytes": backup.compressed_bytes,
        "sha256": backup.sha256 or None,
        "store": backup.store,
        "error": backup.error or None,
        "created_at": iso(backup.created_at),
        "started_at": iso(backup.started_at),
        "finished_at": iso(backup.finished_at),
        "verified_at": iso(backup.verified_at),
        "verified_ok": backup.verified_ok,
    }


def restore_json(restore: Restore) -> dict:
    return {
        "id": restore.pk,
        "backup_id": restore.backup_id,
        "database_id": restore.tenant_id,
        "state": restore.state,
        "progress": restore.progress,
        "error": restore.error or None,
        "created_at": restore.created_at.isoformat(),
        "finished_at": restore.finished_at.isoformat() if restore.finished_at else None,
    }


def _backup_of(tenant: Tenant, backup_id: str) -> Backup:
    try:
        return tenant.backups.get(pk=int(backup_id))
    except (Backup.DoesNotExist, ValueError):
        raise NotFound(f"backup {backup_id} not found") from None


@endpoint("GET", "POST")
def database_backups(request: ApiRequest, tenant_id: str) -> JsonResponse:
    tenant = selectors.tenant_get(account=request.account, tenant_id=tenant_id)
    if request.method == "GET":
        return JsonResponse({"backups": [backup_json(b) for b in tenant.backups.all()]})
    kind = request.json.get("kind", "physical")
    if kind not in ("physical", "logical"):
        raise InvalidInput("kind must be 'physical' (default) or 'logical' (pg_dump export)")
    backup = backups.backup_request(tenant=tenant, actor=_actor(request), logical=kind == "logical")
    return JsonResponse(backup_json(backup), status=202)


@endpoint("GET")
def database_backup_download(request: ApiRequest, tenant_id: str, backup_id: str):
    """A logical export, as a pg_dump custom-format file for pg_restore."""
    tenant = selectors.tenant_get(account=request.account, tenant_id=tenant_id)
    backup = _backup_of(tenant, backup_id)
    if backup.kind != Backup.Kind.LOGICAL:
        raise InvalidInput(
            'only logical exports can be downloaded; create one with {"kind": "logical"}'
        )
    if backup.state != Backup.State.DONE:
        raise Conflict(f"export {backup.pk} is {backup.state}")
    return downloads.export_response(tenant, backup)


@endpoint("GET")
def database_backup(request: ApiRequest, tenant_id: str, backup_id: str) -> JsonResponse:
    tenant = selectors.tenant_get(account=request.account, tenant_id=tenant_id)
    return JsonResponse(backup_json(_backup_of(tenant, backup_id)))


@never_cache  # the answer can hold a password or a token
@endpoint("POST")
def database_backup_restore(request: ApiRequest, tenant_id: str, backup_id: str) -> JsonResponse:
    tenant = selectors.tenant_get(account=request.account, tenant_id=tenant_id)
    backup = _backup_of(tenant, backup_id)
    target = request.json.get("target", "same")
    if target not in ("same", "new"):
        raise InvalidInput("target must be 'same' (in place) or 'new'")
    if target == "new":
        name = request.json.get("name", f"{tenant.name}_restored"[:40])
        if not isinstance(name, str):
            raise InvalidInput("field 'name' must be a string")
        # A new database of the same account (the plan's quota applies), made
        # from the backup: the answer is that of POST /databases.
        return _create_and_wait(request, name, restored_from=backup)
    restore = backups.restore_request(backup=backup, actor=_actor(request))
    return JsonResponse(restore_json(restore), status=202)


@endpoint("GET")
def database_restore(request: ApiRequest, tenant_id: str, restore_id: str) -> JsonResponse:
    tenant = selectors.tenant_get(account=request.account, tenant_id=tenant_id)
    try:
        return JsonResponse(restore_json(tenant.restores.get(pk=int(restore_id))))
    except (Restore.DoesNotExist, ValueError):
        raise NotFound(f"restore {restore_id} not found") from None


@endpoint("GET")
def account_backups(request: ApiRequest) -> JsonResponse:
    """Every usable backup of the account, deleted databases' included."""
    found = Backup.objects.filter(
        tenant__account=request.account, state=Backup.State.DONE
    ).select_related("tenant")
    return JsonResponse(
        {"backups": [backup_json(b) | {"database_name": b.tenant.name} for b in found]}
    )


@never_cache  # the answer can hold a password or a token
@endpoint("POST")
def account_backup_restore(request: ApiRequest, backup_id: str) -> JsonResponse:
    """Restore any of the account's backups (a deleted database's too) into a new one."""
    try:
        backup = Backup.objects.select_related("tenant").get(
            pk=int(backup_id), tenant__account=request.account
        )
    except (Backup.DoesNotExist, ValueError):
        raise NotFound(f"backup {backup_id} not found") from None
    name = request.json.get("name")
    if not isinstance(name, str):
        raise InvalidInput("field 'name' is required and must be a string")
    return _create_and_wait(request, name, restored_from=backup)


# -- documentation -------------------------------------------------------------------


@endpoint("GET", auth=False)
def ca_certificate(request: ApiRequest) -> HttpResponse:
    """The platform's CA certificate: what clients trust to verify the pooler's."""
    response = HttpResponse(tls_ca_pem(), content_type="application/x-pem-file")
    response["Content-Disposition"] = 'inline; filename="dbaas-ca.pem"'
    return response


@endpoint("GET", auth=False)
def openapi_json(request: ApiRequest) -> JsonResponse:
    """This API's OpenAPI 3.1 document (tenants/openapi.py)."""
    return JsonResponse(openapi.document())


@endpoint("GET", auth=False)
def api_docs(request: ApiRequest) -> HttpResponse:
    """The same document as a web page."""
    context = openapi.docs_context(openapi.document())
    return render(request, "tenants/api_docs.html", context)
