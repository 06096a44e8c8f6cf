"""The web pages for app developers: sign up, log in, the dashboard, a database's
page with its actions, and the connection string shown once.

Server-rendered and usable without JavaScript: every action is a POST form that
redirects (post/redirect/get) with a message saying what happened or why not.
"""

import functools

from django import forms
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from tenants import backups, downloads, ratelimit, selectors, services
from tenants.api.errors import status_for
from tenants.errors import NotFound, ServiceError
from tenants.models import Account, Backup, Tenant
from unikernel_images.image import default_image_name, major_of

State = Tenant.State
# States in which something is under way: the page refreshes itself until done.
BUSY_STATES = (State.PROVISIONING, State.DELETING)


class SignupForm(forms.Form):
    email = forms.EmailField(label="Email")
    password = forms.CharField(
        label="Password",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="At least 10 characters, not a common password.",
    )


class EmailAuthenticationForm(AuthenticationForm):
    username = forms.EmailField(
        label="Email", widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"})
    )


class LoginView(auth_views.LoginView):
    form_class = EmailAuthenticationForm
    template_name = "tenants/login.html"

    def post(self, request, *args, **kwargs):
        email = request.POST.get("username", "")
        try:
            ratelimit.check_login(request, email)
        except ServiceError as exc:
            form = self.get_form()
            form.errors.clear()
            form.add_error(None, exc.message[:1].upper() + exc.message[1:])
            return self.render_to_response(self.get_context_data(form=form), status=status_for(exc))
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        ratelimit.login_failed(self.request, self.request.POST.get("username", ""))
        return super().form_invalid(form)


class PasswordResetView(auth_views.PasswordResetView):
    """Sends the mail only within DBAAS_RESET_MAILS_PER_HOUR; the page says the same
    either way (it never tells whether an account exists)."""

    def form_valid(self, form):
        if not ratelimit.check_password_reset(self.request, form.cleaned_data["email"]):
            return redirect(self.get_success_url())
        return super().form_valid(form)


class LogoutView(auth_views.LogoutView):
    pass


def signup(request: HttpRequest) -> HttpResponse:
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            ratelimit.check_signup(request)
            account, _token = services.account_create(
                email=form.cleaned_data["email"], password=form.cleaned_data["password"]
            )
        except ServiceError as exc:
            form.add_error(None, exc.message[:1].upper() + exc.message[1:])
            return render(request, "tenants/signup.html", {"form": form}, status=status_for(exc))
        else:
            login(request, account.user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, "Welcome! Create your first database below.")
            return redirect("dashboard")
    return render(request, "tenants/signup.html", {"form": form})


def account_required(view):
    """Logged in, with a developer account (a staff user without one is sent to the
    admin console): the view gets `account`."""

    @login_required
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        assert isinstance(request.user, User)  # login_required let it through
        account = Account.objects.select_related("plan").filter(user=request.user).first()
        if account is None:
            return render(request, "tenants/no_account.html", status=403)
        return view(request, account, *args, **kwargs)

    return wrapper


def _tenant(account: Account, tenant_id: int) -> Tenant:
    try:
        return selectors.tenant_get(account=account, tenant_id=tenant_id)
    except NotFound:
        raise Http404("no such database") from None


def _actor(request: HttpRequest) -> str:
    return f"web:{request.user.get_username()}"


@account_required
def dashboard(request: HttpRequest, account: Account) -> HttpResponse:
    tenants = list(selectors.tenant_list(account=account))
    usage = selectors.account_usage(account)
    return render(
        request,
        "tenants/dashboard.html",
        {
            "tenants": tenants,
            "plan": account.plan,
            "usage": usage,
            "quota_reached": usage["databases"] >= usage["max_databases"],
            "refresh": any(t.state in BUSY_STATES for t in tenants),
            "postgres_major": major_of(default_image_name()),
        },
    )


@account_required
def database_create(request: HttpRequest, account: Account) -> HttpResponse:
    if request.method != "POST":
        return render(request, "tenants/create.html", {"plan": account.plan})
    name = request.POST.get("name", "").strip()
    try:
        tenant, password = services.tenant_create_ready(
            account=account, name=name, actor=_actor(request)
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return render(
            request,
            "tenants/create.html",
            {"plan": account.plan, "name": name},
            status=status_for(exc),
        )
    if tenant.state == State.FAILED:
        messages.error(request, f"The database could not be created: {tenant.state_reason}")
        return redirect("dashboard")
    return _show_credentials_once(request, tenant, password, created=True)


def _show_credentials_once(request, tenant: Tenant, password: str, created: bool):
    # The password lives only in this session until the page is seen once.
    request.session[f"credentials-{tenant.pk}"] = selectors.credentials_json(tenant, password) | {
        "created": created
    }
    return redirect("database-credentials", tenant_id=tenant.pk)


@never_cache  # shows the password, once: no copy in any cache
@account_required
def database_credentials(request: HttpRequest, account: Account, tenant_id: int) -> HttpResponse:
    tenant = _tenant(account, tenant_id)
    credentials = request.session.pop(f"credentials-{tenant_id}", None)
    if credentials is None:
        messages.info(
            request,
            "The connection string is shown only once; reset the password to get a new one.",
        )
        return redirect("database", tenant_id=tenant.pk)
    return render(request, "tenants/credentials.html", {"tenant": tenant, **credentials})


@account_required
def database_detail(request: HttpRequest, account: Account, tenant_id: int) -> HttpResponse:
    tenant = _tenant(account, tenant_id)
    backup_list = list(tenant.backups.order_by("-created_at", "-id")[:30])
    restores = list(tenant.restores.order_by("-created_at", "-id")[:5])
    busy_backup = any(
        b.state in (Backup.State.PENDING, Backup.State.RUNNING) for b in backup_list
    ) or any(r.state in ("pending", "running") for r in restores)
    return render(
        request,
        "tenants/database.html",
        {
            "tenant": tenant,
            "plan": account.plan,
            "backups": backup_list,
            "restores": restores,
            "refresh": tenant.state in BUSY_STATES or busy_backup,
        },
    )


def _database_action(view):
    """A POST on one database: the view does it; a refusal becomes a message."""

    @account_required
    @require_POST
    @functools.wraps(view)
    def wrapper(request: HttpRequest, account: Account, tenant_id: int, **kwargs):
        tenant = _tenant(account, tenant_id)
        try:
            return view(request, tenant, **kwargs)
        except ServiceError as exc:
            messages.error(request, exc.message[:1].upper() + exc.message[1:])
            return redirect("database", tenant_id=tenant.pk)

    return wrapper


@_database_action
def database_password(request: HttpRequest, tenant: Tenant) -> HttpResponse:
    tenant, password = services.tenant_reset_password_applied(tenant=tenant, actor=_actor(request))
    messages.success(request, "The password was reset; the old connection string stopped working.")
    return _show_credentials_once(request, tenant, password, created=False)


@_database_action
def database_sleep(request: HttpRequest, tenant: Tenant) -> HttpResponse:
    tenant = services.tenant_sleep_settled(tenant=tenant, actor=_actor(request))
    if tenant.state == State.SLEEPING:
        messages.success(request, f"{tenant.name} is asleep; the next connection wakes it.")
    else:
        messages.warning(
            request, f"{tenant.name} is in use (a client is connected); it stays awake."
        )
    return redirect("database", tenant_id=tenant.pk)


@_database_action
def database_wake(request: HttpRequest, tenant: Tenant) -> HttpResponse:
    tenant = services.tenant_wake_settled(tenant=tenant, actor=_actor(request))
    messages.success(request, f"{tenant.name} is {tenant.state}.")
    return redirect("database", tenant_id=tenant.pk)


@_database_action
def database_backup(request: HttpRequest, tenant: Tenant) -> HttpResponse:
    logical = request.POST.get("kind") == "logical"
    backup = backups.backup_request(tenant=tenant, actor=_actor(request), logical=logical)
    what = "Export" if logical else "Backup"
    messages.success(request, f"{what} #{backup.pk} started; it appears below when done.")
    return redirect("database", tenant_id=tenant.pk)


@_database_action
def database_restore(request: HttpRequest, tenant: Tenant, backup_id: int) -> HttpResponse:
    backup = tenant.backups.filter(pk=backup_id).first()
    if backup is None:
        raise Http404("no such backup")
    if request.POST.get("target") == "new":
        name = request.POST.get("name", "").strip()
        new, password = services.tenant_create_ready(
            account=tenant.account, name=name, actor=_actor(request), restored_from=backup
        )
        if new.state == State.FAILED:
            messages.error(request, f"The restore failed: {new.state_reason}")
            return redirect("dashboard")
        messages.success(request, f"{new.name} was made from backup #{backup.pk}.")
        return _show_credentials_once(request, new, password, created=True)
    restore = backups.restore_request(backup=backup, actor=_actor(request))
    messages.success(
        request,
        f"Restore #{restore.pk} of backup #{backup.pk} started; the database keeps "
        "running on its current data until the restored copy has started and passed a check.",
    )
    return redirect("database", tenant_id=tenant.pk)


@account_required
def database_download(request, account: Account, tenant_id: int, backup_id: int):
    """A logical export as a file (the same bytes the API's download gives)."""
    tenant = _tenant(account, tenant_id)
    backup = tenant.backups.filter(
        pk=backup_id, kind=Backup.Kind.LOGICAL, state=Backup.State.DONE
    ).first()
    if backup is None:
        raise Http404("no such export")
    try:
        return downloads.export_response(tenant, backup)
    except ServiceError as exc:  # its host does not answer
        messages.error(request, exc.message)
        return redirect("database", tenant_id=tenant.pk)


@account_required
def database_delete(request: HttpRequest, account: Account, tenant_id: int) -> HttpResponse:
    tenant = _tenant(account, tenant_id)
    context = {"tenant": tenant, "plan": account.plan}
    if request.method != "POST":
        return render(request, "tenants/delete.html", context)
    if request.POST.get("confirm_name", "").strip() != tenant.name:
        messages.error(request, f"Type the database's name, {tenant.name}, to delete it.")
        return render(request, "tenants/delete.html", context, status=400)
    purge = request.POST.get("purge") == "on"
    try:
        services.tenant_delete(tenant=tenant, actor=_actor(request))
        backups.backups_on_delete(tenant=tenant, purge=purge)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("database", tenant_id=tenant.pk)
    kept = "" if purge else " Its newest backup is kept and can be restored into a new database."
    messages.success(request, f"{tenant.name} is being deleted.{kept}")
    return redirect(reverse("dashboard"))
