"""The web pages for app developers (the REST API's routes are in tenants/urls.py)."""

from django.contrib.auth import views as auth_views
from django.urls import path

from tenants import views

database = "databases/<int:tenant_id>"
# Django's admin has templates of the same registration/ names: ours are named here.

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("signup", views.signup, name="signup"),
    path("login", views.LoginView.as_view(), name="login"),
    path("logout", views.LogoutView.as_view(), name="logout"),
    path(
        "password-reset",
        views.PasswordResetView.as_view(
            template_name="tenants/password_reset_form.html",
            email_template_name="tenants/password_reset_email.txt",
            subject_template_name="tenants/password_reset_subject.txt",
        ),
        name="password_reset",
    ),
    path(
        "password-reset/sent",
        auth_views.PasswordResetDoneView.as_view(template_name="tenants/password_reset_done.html"),
        name="password_reset_done",
    ),
    path(
        "password-reset/<uidb64>/<token>",
        auth_views.PasswordResetConfirmView.as_view(
            template_name="tenants/password_reset_confirm.html"
        ),
        name="password_reset_confirm",
    ),
    path(
        "password-reset/done",
        auth_views.PasswordResetCompleteView.as_view(
            template_name="tenants/password_reset_complete.html"
        ),
        name="password_reset_complete",
    ),
    path("databases/new", views.database_create, name="database-create"),
    path(database, views.database_detail, name="database"),
    path(f"{database}/credentials", views.database_credentials, name="database-credentials"),
    path(f"{database}/password", views.database_password, name="database-password"),
    path(f"{database}/sleep", views.database_sleep, name="database-sleep"),
    path(f"{database}/wake", views.database_wake, name="database-wake"),
    path(f"{database}/backups", views.database_backup, name="database-backup"),
    path(
        f"{database}/backups/<int:backup_id>/restore",
        views.database_restore,
        name="database-restore",
    ),
    path(
        f"{database}/backups/<int:backup_id>/download",
        views.database_download,
        name="database-download",
    ),
    path(f"{database}/delete", views.database_delete, name="database-delete"),
]
