from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps  # a module: one default AppConfig here


class TenantsConfig(AppConfig):
    name = "tenants"


class DbaasAdminConfig(admin_apps.AdminConfig):
    """Django's admin, with the host dashboard on its index page."""

    default = False
    default_site = "tenants.admin_site.DbaasAdminSite"
