from django.contrib import admin
from django.urls import include, path

from dbaas import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", views.metrics, name="metrics"),
    # The pages first: the API's routes (tenants.urls, /healthz among them) carry
    # their full paths, and django-ninja adds a root route of its own after them.
    path("", include("tenants.web_urls")),
    path("", include("tenants.urls")),
]

handler404 = "dbaas.views.not_found"
handler500 = "dbaas.views.server_error"
