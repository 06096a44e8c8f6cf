"""The free plan's servers are small: PostgreSQL settings measured for memory per
awake idle server (bench/instances.py, docs/benchmarks.md) that still pass the test
suite and a pgbench run. A plan an operator changed is left as it is."""

from django.db import migrations

FREE = {
    "shared_buffers": "1MB",
    "wal_buffers": "64kB",
    "max_locks_per_transaction": "32",
    "max_pred_locks_per_transaction": "32",
    "max_files_per_process": "100",
    "autovacuum_max_workers": "1",
    "autovacuum_naptime": "5min",
}


def small_free_servers(apps, schema_editor):
    Plan = apps.get_model("tenants", "Plan")
    Plan.objects.filter(name="free", postgres_settings={}).update(postgres_settings=FREE)


def as_before(apps, schema_editor):
    Plan = apps.get_model("tenants", "Plan")
    Plan.objects.filter(name="free", postgres_settings=FREE).update(postgres_settings={})


class Migration(migrations.Migration):
    dependencies = [("tenants", "0018_plan_postgres_settings")]
    operations = [migrations.RunPython(small_free_servers, as_before)]
