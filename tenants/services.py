"""Writes: accounts, tokens, tenants and their state changes.

Every state change is claimed with a conditional UPDATE (zero rows: someone else got
there first) and recorded as an Event in the same transaction.
"""

import hashlib
import re
import secrets
import time
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone

from poolers.scram import new_password, scram_secret
from tenants import selectors, specs
from tenants.dispatch import send_after_commit
from tenants.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidInput,
    QuotaExceeded,
    Unavailable,
)
from tenants.host import tasks as host_tasks
from tenants.lifecycle import event_record, host_heard_from, tenant_transition
from tenants.models import Account, ApiToken, Host, Plan, Tenant
from unikernel_images.image import default_image_name

State = Tenant.State
# The email is the account's user name too: Django keeps 150 characters of it.
EMAIL_MAX_LENGTH = 150
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
NAME_RULE = (
    "a database name is 1 to 40 characters: lowercase letters, digits and underscores, "
    "starting with a letter"
)


# -- accounts and tokens ---------------------------------------------------------------


def account_create(*, email: str, password: str) -> tuple[Account, str]:
    """Sign up; returns the account and its first API token."""
    email = (email or "").strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise InvalidInput("enter a valid email address") from None
    if len(email) > EMAIL_MAX_LENGTH:
        raise InvalidInput(f"emails of up to {EMAIL_MAX_LENGTH} characters only")
    User = get_user_model()
    try:
        validate_password(password or "", user=User(username=email, email=email))
    except ValidationError as exc:
        raise InvalidInput("weak password: " + " ".join(exc.messages)) from None
    plan = Plan.objects.filter(is_default=True).order_by("id").first()
    if plan is None:
        raise Unavailable("no default plan is configured; an operator must create one")
    try:
        with transaction.atomic():
            if User.objects.filter(username__iexact=email).exists():
                raise Conflict("an account with this email already exists")
            user = User.objects.create_user(username=email, email=email, password=password)
            account = Account.objects.create(user=user, plan=plan)
            token = token_issue(account=account)
    except IntegrityError:
        raise Conflict("an account with this email already exists") from None
    return account, token


def token_issue(*, account: Account) -> str:
    raw = "dbaas_" + secrets.token_urlsafe(32)
    ApiToken.objects.create(
        account=account, key_hash=hashlib.sha256(raw.encode()).hexdigest(), prefix=raw[:12]
    )
    return raw


def token_revoke(*, raw_token: str) -> None:
    """The token stops working at once (a leaked one, or a `dbaas logout`)."""
    ApiToken.objects.filter(key_hash=hashlib.sha256(raw_token.encode()).hexdigest()).delete()


def token_create(*, email: str, password: str) -> str:
    user = authenticate(username=(email or "").strip().lower(), password=password or "")
    if user is None or not hasattr(user, "account"):
        raise AuthenticationFailed("invalid email or password")
    return token_issue(account=user.account)


# -- tenants ---------------------------------------------------------------------------


def tenant_create(
    *, account: Account, name: str, actor: str, restored_from=None
) -> tuple[Tenant, str]:
    """Create the row and queue provisioning on the chosen host.

    Returns the tenant and its password, which is not stored anywhere.
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidInput(NAME_RULE)
    if restored_from is not None:
        if restored_from.state != "done":
            raise Conflict(
                f"backup {restored_from.pk} is {restored_from.state}; only a finished one restores"
            )
        if restored_from.kind == "logical":
            # A pg_dump file is not a data directory: provisioning from it would fail.
            raise Conflict("a logical export is restored with pg_restore by you; download it")
    password = new_password()
    with transaction.atomic():
        # Lock the account: concurrent creates must not both pass the quota check.
        account = Account.objects.select_for_update().select_related("plan").get(pk=account.pk)
        live = Tenant.objects.filter(selectors.VISIBLE, account=account)
        if live.filter(name=name).exists():
            raise Conflict(f"you already have a database named {name!r}")
        plan = account.plan
        # A database whose creation failed holds nothing: it does not count.
        if live.exclude(state=State.FAILED).count() >= plan.max_databases:
            raise QuotaExceeded(
                f"the {plan.name} plan allows {plan.max_databases} databases; "
                "delete one to create another"
            )
        host = selectors.host_pick()
        if host is None:
            raise Unavailable("no host has room for a new database right now; try again later")
        tenant = Tenant.objects.create(
            account=account,
            plan=plan,
            host=host,
            name=name,
            slug=_unique_slug(),
            scram_secret=scram_secret(password),
            state=State.PROVISIONING,
            restored_from=restored_from,
            runtime=plan.runtime or settings.DBAAS_RUNTIME,
            # A physical backup starts only on the major it was taken from.
            image=restored_from.tenant.image if restored_from else default_image_name(),
        )
        event_record(
            tenant=tenant,
            action="create",
            to_state=State.PROVISIONING,
            actor=actor,
            message=f"placed on host {host.name}",
        )
        # Not queued: the row goes again, as if the request had never come.
        send_after_commit(
            host_tasks.instance_provision,
            (specs.spec_of(tenant, []), specs.backup_source(tenant)),
            queue=host.queue,
            undo=lambda: Tenant.objects.filter(pk=tenant.pk, state=State.PROVISIONING).delete(),
        )
    return tenant, password


def _unique_slug() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    while True:
        slug = "".join(secrets.choice(alphabet) for _ in range(8))
        if not Tenant.objects.filter(slug=slug).exists():
            return slug


def tenant_delete(*, tenant: Tenant, actor: str) -> None:
    if tenant.state == State.PROVISIONING:
        raise Conflict("the database is still being created; delete it in a moment")
    claimed = tenant_transition(
        tenant=tenant,
        from_states=[State.RUNNING, State.SLEEPING, State.FAILED, State.SUSPENDED],
        to_state=State.DELETING,
        actor=actor,
        action="delete",
    )
    if not claimed and tenant.state not in (State.DELETING,):
        raise Conflict(f"the database cannot be deleted while {tenant.state}")
    # The reconcile loop finishes a deletion whose task was lost.
    send_after_commit(
        host_tasks.instance_destroy, (specs.spec_of(tenant),), queue=tenant.host.queue, swept=True
    )


def tenant_reset_password(*, tenant: Tenant, actor: str) -> str:
    """Queue a new owner password for the host to apply; returns it (shown once)."""
    if tenant.state != State.RUNNING:
        raise Conflict(
            f"the password can be reset only while the database is running, not {tenant.state}"
        )
    password = new_password()
    with transaction.atomic():
        # One change at a time: a second one while the first is being applied
        # would leave one of the two answers with a password that never works.
        claimed = Tenant.objects.filter(
            pk=tenant.pk, state=State.RUNNING, pending_scram_secret=""
        ).update(pending_scram_secret=(secret := scram_secret(password)))
        if not claimed:
            fresh = (
                Tenant.objects.filter(pk=tenant.pk)
                .values_list("state", "pending_scram_secret")
                .first()
            )
            if fresh and fresh[0] == State.RUNNING and fresh[1]:
                raise Conflict(
                    "a new password for this database is being set right now; try again in a moment"
                )
            raise Conflict("the database changed state; try again")
        event_record(tenant=tenant, action="password_reset", actor=actor)
        send_after_commit(
            host_tasks.instance_apply_secret,
            (specs.spec_of(tenant), secret),
            queue=tenant.host.queue,
            undo=lambda: Tenant.objects.filter(pk=tenant.pk, pending_scram_secret=secret).update(
                pending_scram_secret=""
            ),
        )
    return password


def _on_host(tenant: Tenant, task, actor: str, requested: str | None) -> None:
    """Queue `task(tenant id, actor)` on the tenant's host once the caller's transaction
    commits, recording the request as an event named `requested` (if given)."""
    if requested:
        event_record(tenant=tenant, action=requested, actor=actor)
    send_after_commit(task, (specs.spec_of(tenant), actor), queue=tenant.host.queue)


def tenant_sleep(*, tenant: Tenant, actor: str) -> None:
    """Queue putting the tenant to sleep on its host (refused later if in use)."""
    if tenant.state != State.RUNNING:
        raise Conflict(f"only a running database can be put to sleep, not a {tenant.state} one")
    _on_host(tenant, host_tasks.instance_sleep, actor, "sleep_requested")


def tenant_wake(*, tenant: Tenant, actor: str) -> None:
    if tenant.state not in (State.RUNNING, State.SLEEPING):
        raise Conflict(f"a {tenant.state} database cannot be woken")
    _on_host(tenant, host_tasks.instance_wake, actor, None)


def tenant_sleep_settled(*, tenant: Tenant, actor: str) -> Tenant:
    """Put it to sleep and wait (10 s) for the host's answer: the fresh row is
    sleeping, or still running because a client uses it."""
    tenant_sleep(tenant=tenant, actor=actor)
    return tenant_wait(tenant=tenant, until=lambda t: t.state != State.RUNNING, timeout=10)


def tenant_wake_settled(*, tenant: Tenant, actor: str) -> Tenant:
    """Wake it and wait (up to DBAAS_PROVISION_WAIT) until it runs; the fresh row."""
    tenant_wake(tenant=tenant, actor=actor)
    # Stop waiting as soon as it runs, or as soon as it cannot any more (deleted,
    # suspended meanwhile): that is a 409 now, not a timeout later.
    fresh = tenant_wait(
        tenant=tenant,
        until=lambda t: t.state not in (State.SLEEPING,),
        timeout=settings.DBAAS_PROVISION_WAIT,
    )
    if fresh.state not in (State.RUNNING, State.SLEEPING):
        raise Conflict(f"the database is {fresh.state} now; it cannot be woken")
    return fresh


def tenant_restart(*, tenant: Tenant, actor: str) -> None:
    if tenant.state != State.RUNNING:
        raise Conflict(f"only a running database can be restarted, not a {tenant.state} one")
    _on_host(tenant, host_tasks.instance_restart, actor, "restart_requested")


def tenant_suspend(*, tenant: Tenant, actor: str) -> None:
    """Suspend it (its state now), and queue refusing its connections and stopping
    it on its host, keeping its data."""
    with transaction.atomic():
        event_record(tenant=tenant, action="suspend_requested", actor=actor)
        if not tenant_transition(
            tenant=tenant,
            from_states=[State.RUNNING, State.SLEEPING],
            to_state=State.SUSPENDED,
            action="suspend",
            actor=actor,
            reason="suspended by an operator",
        ):
            raise Conflict(f"a {tenant.state} database cannot be suspended")
        _on_host(tenant, host_tasks.instance_suspend, actor, None)


def tenant_unsuspend(*, tenant: Tenant, actor: str) -> None:
    if tenant.state != State.SUSPENDED:
        raise Conflict(f"the database is {tenant.state}, not suspended")
    _on_host(tenant, host_tasks.instance_unsuspend, actor, "unsuspend_requested")


def tenant_create_ready(
    *, account: Account, name: str, actor: str, restored_from=None
) -> tuple[Tenant, str]:
    """Create a database and wait (up to DBAAS_PROVISION_WAIT) until the host agent
    has it running, so that its connection string works once shown. The tenant
    returned may still be provisioning (slow host), or failed with its reason."""
    tenant, password = tenant_create(
        account=account, name=name, actor=actor, restored_from=restored_from
    )
    tenant = tenant_wait(
        tenant=tenant,
        until=lambda t: t.state != State.PROVISIONING,
        timeout=settings.DBAAS_PROVISION_WAIT,
    )
    return tenant, password


def tenant_reset_password_applied(*, tenant: Tenant, actor: str) -> tuple[Tenant, str]:
    """Reset the password and wait until host and pooler have the new one."""
    password = tenant_reset_password(tenant=tenant, actor=actor)
    tenant = tenant_wait(
        tenant=tenant,
        until=lambda t: not t.pending_scram_secret,
        timeout=settings.DBAAS_PROVISION_WAIT,
    )
    if tenant.pending_scram_secret:
        raise Unavailable("the new password is not applied yet; it will be shortly")
    return tenant, password


def tenant_wait(*, tenant: Tenant, until, timeout: float) -> Tenant:
    """Poll the row until `until(tenant)` holds or `timeout` passes; return the fresh row."""
    deadline = time.monotonic() + timeout
    while True:
        fresh = Tenant.objects.select_related("host", "plan").get(pk=tenant.pk)
        if until(fresh) or time.monotonic() >= deadline:
            return fresh
        time.sleep(0.01)  # the host agent usually needs tens of milliseconds


# -- hosts -------------------------------------------------------------------------------


def host_heartbeat_record(*, name: str, checks: dict[str, str]) -> None:
    """A heartbeat from a host: alive now, with what it says of its parts; a host that
    was down is up again. One whose agent is not running is not alive (nothing it
    is asked to do gets done): only what it says is kept."""
    host = Host.objects.filter(name=name).first()
    if host is None:  # its row is gone (a test database flushed, say)
        return
    if checks.get("agent", "ok") != "ok":
        Host.objects.filter(pk=host.pk).update(health=checks)
        return
    host_heard_from(host, "heartbeat", health=checks)


def hosts_mark_down(*, now=None) -> int:
    """Hosts silent for longer than DBAAS_HOST_DOWN_AFTER: down since their last
    heartbeat (since they registered, if they never sent one). Their databases keep
    their states and come back with the host, but those it was still to make fail."""
    now = now or timezone.now()
    silent_since = now - timedelta(seconds=settings.DBAAS_HOST_DOWN_AFTER)
    marked = 0
    silent = Host.objects.filter(down_since__isnull=True).exclude(
        Host.heard_from_since(silent_since)
    )
    for host in silent:
        last = host.heartbeat_at or host.created_at
        # Claimed: two beats at once mark it (and say so) once.
        if Host.objects.filter(pk=host.pk, down_since__isnull=True).update(down_since=last):
            event_record(
                host=host, action="host_down", message=f"no heartbeat since {last:%H:%M:%S}"
            )
            _fail_provisionings_on(host)
            marked += 1
    return marked


def _fail_provisionings_on(host: Host) -> None:
    """Databases the stopped host was still to make: failed now, with the reason, not
    left `provisioning` until it is back (their owners delete them and create them
    again; the host discards what it made when it returns: its reconcile)."""
    for tenant in Tenant.objects.filter(host=host, state=State.PROVISIONING):
        tenant_transition(
            tenant=tenant,
            from_states=[State.PROVISIONING],
            to_state=State.FAILED,
            reason=f"its host {host.name} stopped before making it; delete it and create it again",
            actor="heartbeat",
            action="provision",
        )
