"""The minimal web flow: sign up, log in, create a database, see its string once."""

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from tenants import selectors, services
from tenants.errors import NotFound, ServiceError
from tenants.models import Tenant


class SignupForm(forms.Form):
    email = forms.EmailField(label="Email")
    password = forms.CharField(label="Password", widget=forms.PasswordInput, min_length=1)


class EmailAuthenticationForm(AuthenticationForm):
    username = forms.EmailField(label="Email", widget=forms.EmailInput(attrs={"autofocus": True}))


class LoginView(auth_views.LoginView):
    form_class = EmailAuthenticationForm


class LogoutView(auth_views.LogoutView):
    pass


def signup(request: HttpRequest) -> HttpResponse:
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            account, _token = services.account_create(
                email=form.cleaned_data["email"], password=form.cleaned_data["password"]
            )
        except ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            login(request, account.user, backend="django.contrib.auth.backends.ModelBackend")
            return redirect("dashboard")
    return render(request, "tenants/signup.html", {"form": form})


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    account = request.user.account if hasattr(request.user, "account") else None
    if account is None:
        return render(request, "tenants/no_account.html", status=403)
    tenants = selectors.tenant_list(account=account)
    return render(
        request,
        "tenants/dashboard.html",
        {"tenants": tenants, "plan": account.plan, "count": len(tenants)},
    )


@login_required
@require_POST
def database_create(request: HttpRequest) -> HttpResponse:
    account = getattr(request.user, "account", None)
    if account is None:
        return redirect("dashboard")
    try:
        tenant, password = services.tenant_create(
            account=account,
            name=request.POST.get("name", "").strip(),
            actor=f"web:{request.user.email}",
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("dashboard")
    tenant = services.tenant_wait(
        tenant=tenant,
        until=lambda t: t.state != Tenant.State.PROVISIONING,
        timeout=settings.DBAAS_PROVISION_WAIT,
    )
    if tenant.state == Tenant.State.FAILED:
        messages.error(request, f"The database could not be created: {tenant.state_reason}")
        return redirect("dashboard")
    # Shown once: the password lives only in this session until the page is seen.
    request.session[f"created-{tenant.pk}"] = selectors.credentials_json(tenant, password)
    return redirect("database-created", tenant_id=tenant.pk)


@login_required
def database_created(request: HttpRequest, tenant_id: int) -> HttpResponse:
    account = getattr(request.user, "account", None)
    try:
        tenant = selectors.tenant_get(account=account, tenant_id=tenant_id) if account else None
    except NotFound:
        tenant = None
    credentials = request.session.pop(f"created-{tenant_id}", None)
    if tenant is None or credentials is None:
        messages.info(
            request,
            "The connection string is shown only once; reset the password to get a new one.",
        )
        return redirect("dashboard")
    return render(
        request, "tenants/created.html",
        {"tenant": tenant, "connection_string": credentials["connection_string"],
         "pooled_connection_string": credentials["pooled_connection_string"]},
    )  # fmt: skip
