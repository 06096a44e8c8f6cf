from django.contrib import admin
from django.urls import include, path

from dbaas import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics, name="metrics"),
    path("", include("tenants.urls")),
    path("", include("tenants.web_urls")),
]

handler404 = "dbaas.views.not_found"
handler500 = "dbaas.views.server_error"
