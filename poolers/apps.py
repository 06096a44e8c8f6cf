from django.apps import AppConfig


class PoolersConfig(AppConfig):
    name = "poolers"
    verbose_name = "Connection poolers"
