from django.urls import path

from tenants.api import api

# Every route of the API (and /healthz) is django-ninja's, with its full path.
urlpatterns = [path("", api.urls)]
