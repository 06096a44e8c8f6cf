from django.apps import AppConfig


class DbaasConfig(AppConfig):
    name = "dbaas"
    verbose_name = "dbaas platform"
