from django.db import migrations


def create_free_plan(apps, schema_editor):
    Plan = apps.get_model("tenants", "Plan")
    Plan.objects.get_or_create(
        name="free",
        defaults={
            "max_databases": 3, "storage_limit_mb": 512, "connection_limit": 20,
            "pool_size": 10, "sleeps_when_idle": True, "idle_timeout_seconds": 300,
            "is_default": True,
        },
    )


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]
    operations = [migrations.RunPython(create_free_plan, migrations.RunPython.noop)]
