"""The operators' console: Django's admin with a host capacity dashboard on its index."""

from django.contrib import admin

from tenants import selectors


class DbaasAdminSite(admin.AdminSite):
    site_header = "dbaas operations"
    site_title = "dbaas operations"
    index_title = "Hosts and tenants"
    index_template = "admin/dbaas_index.html"

    def index(self, request, extra_context=None):
        context = {"hosts": selectors.host_capacity()} | (extra_context or {})
        return super().index(request, context)
